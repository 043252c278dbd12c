//! `Printer`: data to stdout, progress to stderr (hidden with `-q`).

use std::io::Write;

use indicatif::{ProgressBar, ProgressStyle};

/// Where the CLI's output goes.
pub struct Printer {
    quiet: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Self {
        Self { quiet }
    }

    /// A line of data (stdout). When stdout is closed early (`conclave job list | head`),
    /// exits quietly instead of failing.
    pub fn data(&self, line: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{}", line.as_ref()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }

    /// A status line (stderr), suppressed by `-q`.
    pub fn status(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }

    /// A progress bar of `len` steps on stderr (hidden by `-q` or when stderr is not a terminal).
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar
    }
}
