//! `guruconnect-release`: the offline release tool (to be written).

fn main() {
    eprintln!("guruconnect-release: not implemented yet");
    std::process::exit(2);
}
