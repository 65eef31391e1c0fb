//! Progress bars on stderr (indicatif hides them when stderr is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` units, labelled `msg`.
pub fn bar(len: u64, msg: impl Into<String>, unit: &str) -> ProgressBar {
    let template =
        format!("{{msg:<28}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})");
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let pb = ProgressBar::new(len).with_style(style);
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A spinner for a step of unknown length.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let pb = ProgressBar::new_spinner().with_style(style);
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}
