//! Progress bars on stderr; indicatif hides them when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(what: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg:.dim}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// A callback for the library's (what, done, total) progress reports.
pub fn reporter(pb: &ProgressBar) -> impl Fn(&str, u64, u64) + Sync + '_ {
    move |msg, done, total| {
        pb.set_length(total);
        pb.set_position(done);
        pb.set_message(msg.to_string());
    }
}
