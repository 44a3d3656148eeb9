//! The `GuruConnectAgent` Windows service: `guruconnect-agent service`, the entry point the
//! Service Control Manager starts (as LocalSystem, in session 0).
//!
//! Session 0 has no user desktop, so the service is only a supervisor. It launches the
//! worker, `guruconnect-agent.exe run --config %ProgramData%\GuruConnect\agent.toml
//! --control-pipe NAME --log-file …\agent.log`, in the active console session: it
//! duplicates its own LocalSystem token (`DuplicateTokenEx`), moves the copy to that session
//! (`SetTokenInformation(TokenSessionId)`, which needs the TCB privilege LocalSystem has) and
//! starts the worker with `CreateProcessAsUserW` on `winsta0\default`, without a window,
//! suspended until it is in a job object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` (so the
//! worker never outlives the service). A worker that exits is restarted with backoff (1 s
//! doubling to 60 s, reset after a minute of running); with no console session (between a
//! logoff and the next logon screen) the supervisor waits and retries. A session change
//! (`SERVICE_CONTROL_SESSIONCHANGE`: console connect or disconnect, logon, logoff) relaunches
//! the worker in the console session. On Stop or Shutdown the supervisor writes `stop` to
//! the worker's named pipe (`\\.\pipe\GuruConnectAgent-<service pid>-<n>`, created by the
//! worker with a DACL for SYSTEM and Administrators, local clients only), waits up to
//! [`STOP_GRACE`] and then terminates it.
//!
//! Both processes log to `%ProgramData%\GuruConnect\agent.log` ([`LogFile`]: each line
//! appended, the file renamed to `agent.log.1` past [`LOG_ROTATE_BYTES`]); the worker's
//! stderr goes there too, so its own messages (a refused enrollment key, the retry delay)
//! are next to the supervisor's (a worker exit code and the restart delay).
//!
//! # What Wine verifies, and what it does not
//!
//! Under Wine (`services.exe`), `install` registers the service (`wine sc query
//! GuruConnectAgent` shows it), `wine net start GuruConnectAgent` runs this supervisor, which
//! launches the worker, logs to `agent.log` (the worker's refused enrollment and its retry
//! delay included), restarts a worker that exits with growing delays, and on a stop
//! (`uninstall`, `net stop`) stops the worker over the pipe (`scripts/windows/test.sh
//! --service` checks all of this). Wine ends its whole session, services included, once no
//! ordinary (non-service) process is left, e.g. between two worker launches: a test under
//! Wine keeps one running. The named pipe and the log writer are also
//! covered by unit tests. UNVERIFIED (real Windows only): session 0 isolation itself, the
//! token's move to the console session (Wine ignores the token of `CreateProcessAsUserW`
//! and has a single session), `SERVICE_CONTROL_SESSIONCHANGE` (Wine's service manager never
//! sends it), the job object's kill on close when the service process dies, and the pipe's
//! and directory's ACLs being enforced.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
    ServiceType, SessionChangeReason,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_sys::Win32::Foundation::{
    CloseHandle, HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::{
    DuplicateTokenEx, SecurityIdentification, SetTokenInformation, TOKEN_ADJUST_DEFAULT,
    TOKEN_ADJUST_SESSIONID, TOKEN_ASSIGN_PRIMARY, TOKEN_DUPLICATE, TOKEN_QUERY, TokenPrimary,
    TokenSessionId,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject,
};
use windows_sys::Win32::System::RemoteDesktop::WTSGetActiveConsoleSessionId;
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CREATE_SUSPENDED, CreateProcessAsUserW, GetCurrentProcess,
    GetCurrentProcessId, GetExitCodeProcess, OpenProcessToken, PROCESS_INFORMATION, ResumeThread,
    STARTF_USESTDHANDLES, STARTUPINFOW, TerminateProcess, WaitForSingleObject,
};

use super::keystore::data_dir;
use super::{last_error, wide};
use crate::backoff::Backoff;

/// The service's name (the MSI's `ServiceInstall` uses the same).
pub const SERVICE_NAME: &str = "GuruConnectAgent";
/// The service's display name.
pub const DISPLAY_NAME: &str = "GuruConnect Agent";
/// The service's description.
pub const DESCRIPTION: &str = "GuruConnect remote support agent: lets your IT provider see \
                               and control this computer when they connect";
/// The argument the SCM starts the binary with.
pub const SERVICE_ARGUMENT: &str = "service";
/// How long a worker may take to exit after `stop` before it is terminated.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// `agent.log` is renamed to `agent.log.1` when it would grow past this.
pub const LOG_ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// The worker's exit code when it has no interactive desktop (main.rs `EXIT_NO_DISPLAY`).
const EXIT_NO_DISPLAY: u32 = 3;
/// `WTSGetActiveConsoleSessionId` when no session is attached to the console.
const NO_CONSOLE_SESSION: u32 = 0xFFFF_FFFF;

/// `%ProgramData%\GuruConnect\agent.toml`.
pub fn config_path() -> PathBuf {
    data_dir().join("agent.toml")
}

/// `%ProgramData%\GuruConnect\agent.log`.
pub fn log_path() -> PathBuf {
    data_dir().join("agent.log")
}

// ---------------------------------------------------------------------------------------
// The log file.

/// Appends whole lines to a log file shared by the service and its worker: each write
/// opens the file, appends and closes it (the two processes never hold it open), renaming
/// it to `<name>.1` first when it would pass [`LOG_ROTATE_BYTES`]. A `tracing` writer:
/// `tracing_subscriber::fmt().with_writer(LogFile::new(path))`.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    limit: u64,
}

impl LogFile {
    /// A writer for `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            limit: LOG_ROTATE_BYTES,
        }
    }

    /// The same with another rotation size (tests).
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// The rotated file's path (`agent.log.1`).
    pub fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends `data`, rotating first when needed.
    pub fn append(&self, data: &[u8]) -> std::io::Result<()> {
        use std::os::windows::fs::OpenOptionsExt as _;
        use windows_sys::Win32::Storage::FileSystem::{
            FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE,
        };
        if let Ok(meta) = std::fs::metadata(&self.path)
            && meta.len() > 0
            && meta.len() + data.len() as u64 > self.limit
        {
            // Another process may be writing: losing the race only means one more line
            // in the old file.
            let _ = std::fs::rename(&self.path, self.rotated_path());
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
            .open(&self.path)?;
        file.write_all(data)
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self)
    }
}

/// One event's writer (see [`LogFile`]).
#[derive(Debug)]
pub struct LogFileWriter<'a>(&'a LogFile);

impl std::io::Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The worker's control pipe.

/// `\\.\pipe\NAME` for a pipe name given bare or in full.
pub fn pipe_path(name: &str) -> String {
    if name.starts_with(r"\\.\pipe\") {
        name.to_owned()
    } else {
        format!(r"\\.\pipe\{name}")
    }
}

/// Waits until a client writes `stop` to the pipe `name` (the worker side of
/// `--control-pipe`). The pipe admits local SYSTEM and Administrators only. Returns an error
/// when the pipe cannot be created or served; the caller logs it and runs on without it.
pub async fn wait_for_stop(name: &str) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let path = pipe_path(name);
    let mut first = true;
    loop {
        let server = create_pipe(&path, first)?;
        first = false;
        server.connect().await?;
        let mut server = server;
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < buf.len() {
            match server.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].contains(&b'\n') {
                break;
            }
        }
        if String::from_utf8_lossy(&buf[..len]).trim() == "stop" {
            return Ok(());
        }
        tracing::warn!("ignoring an unknown request on the control pipe");
    }
}

/// One instance of the control pipe, admitting local SYSTEM and Administrators only.
fn create_pipe(
    path: &str,
    first: bool,
) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
    use tokio::net::windows::named_pipe::ServerOptions;
    let descriptor = super::keystore::Descriptor::from_sddl("D:P(A;;GA;;;SY)(A;;GA;;;BA)")?;
    let mut attributes = descriptor.attributes();
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .access_inbound(true)
        .access_outbound(false);
    // SAFETY: `attributes` points at a live SECURITY_ATTRIBUTES whose descriptor
    // (`descriptor`) outlives the call.
    unsafe {
        options.create_with_security_attributes_raw(
            path,
            (&raw mut attributes).cast::<core::ffi::c_void>(),
        )
    }
}

/// Writes `stop` to the pipe `name`, retrying until `within` has passed (the worker may not
/// have created it yet).
pub fn send_stop(name: &str, within: Duration) -> std::io::Result<()> {
    let path = pipe_path(name);
    let deadline = Instant::now() + within;
    loop {
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut pipe) => return pipe.write_all(b"stop\n"),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Launching the worker.

struct OwnedHandle(HANDLE);

impl OwnedHandle {
    fn new(handle: HANDLE, what: &str) -> std::io::Result<Self> {
        if handle.is_null() || handle == windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE {
            return Err(std::io::Error::other(format!("{what}: {}", last_error())));
        }
        Ok(Self(handle))
    }
}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: the handle is owned and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// A job object that kills its processes when its last handle (the service's) closes.
struct Job(OwnedHandle);

impl Job {
    fn new() -> std::io::Result<Self> {
        // SAFETY: no attributes, no name.
        let job = OwnedHandle::new(
            unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) },
            "CreateJobObjectW",
        )?;
        // SAFETY: a zeroed limit structure is valid; only the flag below is set.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `limits` is the structure this information class expects, with its size.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                (&raw const limits).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(std::io::Error::other(format!(
                "SetInformationJobObject: {}",
                last_error()
            )));
        }
        Ok(Self(job))
    }
}

/// A running worker.
struct Worker {
    process: OwnedHandle,
    pid: u32,
    pipe: String,
    session: u32,
    started: Instant,
}

impl Worker {
    /// The exit code once the worker has exited.
    fn exited(&self) -> Option<u32> {
        // SAFETY: valid process handle; a zero timeout only polls.
        if unsafe { WaitForSingleObject(self.process.0, 0) } != WAIT_OBJECT_0 {
            return None;
        }
        let mut code = 0u32;
        // SAFETY: valid process handle and out pointer.
        unsafe { GetExitCodeProcess(self.process.0, &mut code) };
        Some(code)
    }

    /// Asks the worker to stop over its pipe, then terminates it after [`STOP_GRACE`].
    fn stop(self) {
        if self.exited().is_some() {
            return;
        }
        match send_stop(&self.pipe, Duration::from_secs(3)) {
            Ok(()) => tracing::info!(pid = self.pid, "asked the agent to stop"),
            Err(e) => tracing::warn!(pid = self.pid, "cannot reach the agent's control pipe: {e}"),
        }
        let grace = u32::try_from(STOP_GRACE.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: valid process handle.
        if unsafe { WaitForSingleObject(self.process.0, grace) } == WAIT_OBJECT_0 {
            tracing::info!(pid = self.pid, "the agent stopped");
            return;
        }
        tracing::warn!(
            pid = self.pid,
            "the agent did not stop within {} s; terminating it",
            STOP_GRACE.as_secs()
        );
        // SAFETY: valid process handle.
        unsafe { TerminateProcess(self.process.0, 1) };
        // SAFETY: valid process handle.
        unsafe { WaitForSingleObject(self.process.0, 5000) };
    }
}

/// Quotes one command-line argument the way `CommandLineToArgvW` reads it back.
fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_owned();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// The worker's command line.
fn worker_command_line(exe: &Path, config: &Path, pipe: &str, log: &Path) -> String {
    [
        quote(&exe.to_string_lossy()),
        "run".into(),
        "--config".into(),
        quote(&config.to_string_lossy()),
        "--control-pipe".into(),
        quote(pipe),
        "--log-file".into(),
        quote(&log.to_string_lossy()),
    ]
    .join(" ")
}

/// The primary token the worker runs with: a copy of this process's (LocalSystem) token,
/// moved to `session`. Moving it may fail (no TCB privilege, or Wine): the copy is then
/// used as it is, and the caller logs why.
fn session_token(session: u32) -> std::io::Result<(OwnedHandle, Option<String>)> {
    let mut own: HANDLE = std::ptr::null_mut();
    let access = TOKEN_DUPLICATE
        | TOKEN_QUERY
        | TOKEN_ASSIGN_PRIMARY
        | TOKEN_ADJUST_DEFAULT
        | TOKEN_ADJUST_SESSIONID;
    // SAFETY: the pseudo handle of this process and a valid out pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), access, &mut own) } == 0 {
        return Err(std::io::Error::other(format!(
            "OpenProcessToken: {}",
            last_error()
        )));
    }
    let own = OwnedHandle::new(own, "OpenProcessToken")?;
    let mut primary: HANDLE = std::ptr::null_mut();
    // SAFETY: a valid token handle and out pointer.
    let ok = unsafe {
        DuplicateTokenEx(
            own.0,
            access,
            std::ptr::null(),
            SecurityIdentification,
            TokenPrimary,
            &mut primary,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::other(format!(
            "DuplicateTokenEx: {}",
            last_error()
        )));
    }
    let primary = OwnedHandle::new(primary, "DuplicateTokenEx")?;
    // SAFETY: TokenSessionId takes a u32 of that size.
    let ok = unsafe {
        SetTokenInformation(
            primary.0,
            TokenSessionId,
            (&raw const session).cast(),
            std::mem::size_of::<u32>() as u32,
        )
    };
    let warning = (ok == 0).then(|| {
        format!(
            "cannot move the agent's token to session {session}: SetTokenInformation: {}",
            last_error()
        )
    });
    Ok((primary, warning))
}

/// Starts the worker in `session`, suspended until it is in `job`.
fn launch(job: &Job, session: u32, pipe: &str) -> std::io::Result<Worker> {
    use std::os::windows::fs::OpenOptionsExt as _;
    use std::os::windows::io::AsRawHandle as _;
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE,
    };
    let exe = std::env::current_exe()?;
    let log = log_path();
    let command_line = worker_command_line(&exe, &config_path(), pipe, &log);
    let (token, warning) = session_token(session)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}; starting the agent in this service's session");
    }
    // The worker's stdout and stderr: agent.log, appended.
    let stderr = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .open(&log)?;
    let stderr_handle = stderr.as_raw_handle() as HANDLE;
    // SAFETY: a valid handle owned by `stderr`, made inheritable for the child only.
    unsafe { SetHandleInformation(stderr_handle, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) };
    let mut desktop = wide(r"winsta0\default");
    // SAFETY: a zeroed STARTUPINFOW is valid; the fields below are set.
    let mut startup: STARTUPINFOW = unsafe { std::mem::zeroed() };
    startup.cb = std::mem::size_of::<STARTUPINFOW>() as u32;
    startup.lpDesktop = desktop.as_mut_ptr();
    startup.dwFlags = STARTF_USESTDHANDLES;
    startup.hStdOutput = stderr_handle;
    startup.hStdError = stderr_handle;
    // SAFETY: zeroed out structure.
    let mut info: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    let application = wide(&exe.to_string_lossy());
    let mut command_line = wide(&command_line);
    let directory = wide(&data_dir().to_string_lossy());
    // SAFETY: NUL-terminated strings (the command line mutable, as required), a valid
    // token, startup info and out structure; handles are inherited (the log file).
    let ok = unsafe {
        CreateProcessAsUserW(
            token.0,
            application.as_ptr(),
            command_line.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            1,
            CREATE_NO_WINDOW | CREATE_SUSPENDED,
            std::ptr::null(),
            directory.as_ptr(),
            &startup,
            &mut info,
        )
    };
    drop(stderr);
    if ok == 0 {
        return Err(std::io::Error::other(format!(
            "CreateProcessAsUserW: {}",
            last_error()
        )));
    }
    let process = OwnedHandle::new(info.hProcess, "CreateProcessAsUserW")?;
    let thread = OwnedHandle::new(info.hThread, "CreateProcessAsUserW")?;
    // SAFETY: valid job and process handles.
    if unsafe { AssignProcessToJobObject(job.0.0, process.0) } == 0 {
        tracing::warn!(
            "cannot put the agent in the service's job object ({}); it may outlive the service",
            last_error()
        );
    }
    // SAFETY: the suspended main thread of the new process.
    unsafe { ResumeThread(thread.0) };
    Ok(Worker {
        process,
        pid: info.dwProcessId,
        pipe: pipe.to_owned(),
        session,
        started: Instant::now(),
    })
}

// ---------------------------------------------------------------------------------------
// The supervisor.

/// What the control handler tells the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// Stop or Shutdown.
    Stop,
    /// A session change that calls for a relaunch.
    Session(u32),
}

/// The active console session, when one is attached.
fn console_session() -> Option<u32> {
    // SAFETY: no arguments.
    let id = unsafe { WTSGetActiveConsoleSessionId() };
    (id != NO_CONSOLE_SESSION).then_some(id)
}

/// Runs the supervisor until `events` says stop; `stopping` is called as soon as it does
/// (to report `StopPending` before the worker is stopped).
fn supervise(events: &mpsc::Receiver<Event>, stopping: impl Fn()) {
    let job = match Job::new() {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::error!("cannot create the job object for the agent: {e}");
            None
        }
    };
    let Some(job) = job else {
        // Without a job the worker could outlive us; still wait for Stop.
        while !matches!(events.recv(), Ok(Event::Stop) | Err(_)) {}
        stopping();
        return;
    };
    // SAFETY: no arguments.
    let service_pid = unsafe { GetCurrentProcessId() };
    let mut launches = 0u32;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut worker: Option<Worker> = None;
    let mut next_launch = Instant::now();
    let mut waiting_for_console = false;
    loop {
        let timeout = if worker.is_some() {
            Duration::from_millis(250)
        } else {
            next_launch
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500))
        };
        match events.recv_timeout(timeout) {
            Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                tracing::info!("stopping");
                stopping();
                if let Some(w) = worker.take() {
                    w.stop();
                }
                return;
            }
            Ok(Event::Session(session)) => {
                tracing::info!(session, "session change: relaunching the agent");
                if let Some(w) = worker.take() {
                    w.stop();
                }
                next_launch = Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(w) = &worker {
            let Some(code) = w.exited() else {
                continue;
            };
            if w.started.elapsed() > Duration::from_secs(60) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let why = if code == EXIT_NO_DISPLAY {
                format!(" (no interactive desktop in session {})", w.session)
            } else {
                String::new()
            };
            tracing::warn!(
                pid = w.pid,
                "the agent exited with code {code}{why}; restarting it in {:.1} s",
                delay.as_secs_f32()
            );
            worker = None;
            next_launch = Instant::now() + delay;
            continue;
        }
        if Instant::now() < next_launch {
            continue;
        }
        let Some(session) = console_session() else {
            if !waiting_for_console {
                tracing::info!("no user session on the console yet; waiting");
                waiting_for_console = true;
            }
            next_launch = Instant::now() + Duration::from_secs(2);
            continue;
        };
        waiting_for_console = false;
        launches += 1;
        let pipe = format!("{SERVICE_NAME}-{service_pid}-{launches}");
        match launch(&job, session, &pipe) {
            Ok(w) => {
                tracing::info!(pid = w.pid, session, "started the agent");
                worker = Some(w);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(
                    session,
                    "cannot start the agent: {e}; retrying in {:.1} s",
                    delay.as_secs_f32()
                );
                next_launch = Instant::now() + delay;
            }
        }
    }
}

fn status(state: ServiceState, accept: ServiceControlAccept, wait: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code: ServiceExitCode::Win32(0),
        checkpoint: 0,
        wait_hint: wait,
        process_id: None,
    }
}

windows_service::define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    let (sender, events) = mpsc::channel();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = sender.send(Event::Stop);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::SessionChange(change) => {
            if matches!(
                change.reason,
                SessionChangeReason::ConsoleConnect
                    | SessionChangeReason::ConsoleDisconnect
                    | SessionChangeReason::SessionLogon
                    | SessionChangeReason::SessionLogoff
            ) {
                let _ = sender.send(Event::Session(change.notification.session_id));
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!("cannot register the service control handler: {e}");
            return;
        }
    };
    let accept = ServiceControlAccept::STOP
        | ServiceControlAccept::SHUTDOWN
        | ServiceControlAccept::SESSION_CHANGE;
    if let Err(e) = handle.set_service_status(status(ServiceState::Running, accept, Duration::ZERO))
    {
        tracing::error!("cannot report the service as running: {e}");
    }
    tracing::info!(
        version = crate::version::agent_version(),
        config = %config_path().display(),
        "the {SERVICE_NAME} service is running"
    );
    supervise(&events, || {
        let _ = handle.set_service_status(status(
            ServiceState::StopPending,
            ServiceControlAccept::empty(),
            STOP_GRACE + Duration::from_secs(5),
        ));
    });
    tracing::info!("the {SERVICE_NAME} service stopped");
    let _ = handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        Duration::ZERO,
    ));
}

/// `guruconnect-agent service`: hands this thread to the Service Control Manager, which
/// runs [`service_main`] until the service stops. Run from a console, it fails with a clear
/// message.
pub fn run() -> Result<(), String> {
    // main.rs created the data directory (private) for the log, when it could.
    windows_service::service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        let not_scm = matches!(&e, windows_service::Error::Winapi(io)
            if io.raw_os_error() == Some(windows_sys::Win32::Foundation::ERROR_FAILED_SERVICE_CONTROLLER_CONNECT as i32));
        if not_scm {
            format!(
                "`service` is started by the Service Control Manager; run \
                 `guruconnect-agent install` to register the {SERVICE_NAME} service, or \
                 `guruconnect-agent run` in the foreground"
            )
        } else {
            format!("cannot start the service dispatcher: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn arguments_are_quoted_for_command_line_to_argv() {
        assert_eq!(quote("run"), "run");
        assert_eq!(
            quote(r"C:\Program Files\GuruConnect\guruconnect-agent.exe"),
            r#""C:\Program Files\GuruConnect\guruconnect-agent.exe""#
        );
        assert_eq!(quote(r"C:\a b\"), r#""C:\a b\\""#);
        assert_eq!(quote(r#"a"b"#), r#""a\"b""#);
        assert_eq!(quote(""), r#""""#);
        let line = worker_command_line(
            Path::new(r"C:\Program Files\GuruConnect\guruconnect-agent.exe"),
            Path::new(r"C:\ProgramData\GuruConnect\agent.toml"),
            "GuruConnectAgent-4-1",
            Path::new(r"C:\ProgramData\GuruConnect\agent.log"),
        );
        assert_eq!(
            line,
            r#""C:\Program Files\GuruConnect\guruconnect-agent.exe" run --config C:\ProgramData\GuruConnect\agent.toml --control-pipe GuruConnectAgent-4-1 --log-file C:\ProgramData\GuruConnect\agent.log"#
        );
    }

    #[test]
    fn pipe_names_are_completed() {
        assert_eq!(
            pipe_path("GuruConnectAgent-1-2"),
            r"\\.\pipe\GuruConnectAgent-1-2"
        );
        assert_eq!(pipe_path(r"\\.\pipe\x"), r"\\.\pipe\x");
    }

    #[test]
    fn the_control_pipe_stops_on_stop_only() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let name = format!("GuruConnectAgentTest-{}", std::process::id());
        runtime.block_on(async {
            let waiter = tokio::spawn({
                let name = name.clone();
                async move { wait_for_stop(&name).await }
            });
            let client = {
                let name = name.clone();
                tokio::task::spawn_blocking(move || {
                    // Something else first: ignored, the pipe keeps listening.
                    let mut pipe = loop {
                        match std::fs::OpenOptions::new()
                            .write(true)
                            .open(pipe_path(&name))
                        {
                            Ok(p) => break p,
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    };
                    pipe.write_all(b"hello\n").expect("write");
                    drop(pipe);
                    std::thread::sleep(Duration::from_millis(300));
                    send_stop(&name, Duration::from_secs(5))
                })
            };
            client.await.expect("join").expect("send stop");
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("the pipe saw stop")
                .expect("join")
                .expect("served");
        });
    }

    #[test]
    fn the_log_file_appends_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogFile::new(dir.path().join("agent.log")).with_limit(64);
        log.append(b"first line\n").expect("append");
        log.append(b"second line\n").expect("append");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("agent.log")).expect("read"),
            "first line\nsecond line\n"
        );
        log.append(&[b'x'; 60]).expect("append");
        assert_eq!(
            std::fs::read_to_string(log.rotated_path()).expect("rotated"),
            "first line\nsecond line\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("agent.log"))
                .expect("read")
                .len(),
            60
        );
    }

    #[test]
    fn outside_the_scm_service_says_how_to_install() {
        let err = run().expect_err("not started by the SCM");
        assert!(err.contains("guruconnect-agent install"), "{err}");
    }
}
