//! Percentiles and the markdown rows the bench prints.

/// One figure of a scenario.
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// The measured value with its unit.
    pub value: String,
    /// The target, if there is one.
    pub target: String,
    /// "met", "not met" or empty.
    pub verdict: String,
}

impl Row {
    /// A figure without a target.
    pub fn info(figure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            value: value.into(),
            target: String::new(),
            verdict: String::new(),
        }
    }

    /// A figure checked against a target.
    pub fn check(
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Self {
        Self {
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            verdict: if met { "met" } else { "**not met**" }.to_owned(),
        }
    }
}

/// Prints a scenario's rows as a markdown table.
pub fn print_table(scenario: &str, rows: &[Row]) {
    println!();
    println!("### {scenario}");
    println!();
    println!("| Figure | Value | Target | Met |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.figure, row.value, row.target, row.verdict
        );
    }
}

/// Summary of a set of durations in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Nearest-rank percentiles of `samples` (sorted in place).
pub fn summarize(samples: &mut [u64]) -> Summary {
    samples.sort_unstable();
    let rank = |p: f64| -> u64 {
        if samples.is_empty() {
            return 0;
        }
        let n = samples.len() as f64;
        let index = ((p * n).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index]
    };
    Summary {
        count: samples.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: samples.last().copied().unwrap_or(0),
    }
}
