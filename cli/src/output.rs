//! What people and scripts read: aligned tables, colour and a spinner only on a terminal
//! (and never with `NO_COLOR`), and the API's objects as they are for JSON and YAML.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::Fail;

/// Colour on standard output: a terminal, and `NO_COLOR` unset or empty.
pub fn colour_stdout() -> bool {
    no_color_unset() && std::io::stdout().is_terminal()
}

pub fn colour_stderr() -> bool {
    no_color_unset() && std::io::stderr().is_terminal()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

#[derive(Clone, Copy)]
pub enum Colour {
    Green,
    Yellow,
    Red,
    Bold,
    Dim,
}

pub fn paint(text: &str, colour: Colour, on: bool) -> String {
    if !on {
        return text.to_owned();
    }
    let code = match colour {
        Colour::Green => "32",
        Colour::Yellow => "33",
        Colour::Red => "31",
        Colour::Bold => "1",
        Colour::Dim => "2",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

pub fn phase_colour(phase: &str) -> Colour {
    match phase {
        "Running" | "Ready" => Colour::Green,
        "Failed" | "Error" => Colour::Red,
        _ => Colour::Yellow,
    }
}

/// A table: columns aligned on the widest cell, headers in capitals. Colour codes in a
/// cell do not count towards its width.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self { headers: headers.iter().map(|header| (*header).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |cell: &str| visible_width(cell);
        let mut widths: Vec<usize> = self.headers.iter().map(|header| width(header)).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                if index < widths.len() {
                    widths[index] = widths[index].max(width(cell));
                }
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if index + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[index] - width(cell) + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut escape = false;
    for character in text.chars() {
        match (escape, character) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

pub fn print_json<T: Serialize>(value: &T) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(value).map_err(|err| Fail::new(format!("cannot render JSON: {err}")))?;
    println!("{text}");
    Ok(())
}

pub fn print_yaml<T: Serialize>(value: &T) -> Result<(), Fail> {
    let text = serde_yaml::to_string(value).map_err(|err| Fail::new(format!("cannot render YAML: {err}")))?;
    print!("{text}");
    Ok(())
}

/// How long ago `time` was, as people read it: `42s`, `5m`, `3h`, `2d`.
pub fn age(time: &chrono::DateTime<chrono::Utc>) -> String {
    let seconds = (chrono::Utc::now() - *time).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A spinner on standard error while something is awaited, only when standard error is
/// a terminal (and `NO_COLOR` unset); cleared when dropped.
pub struct Spinner {
    stop: Arc<AtomicBool>,
    message: Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let text = Arc::new(std::sync::Mutex::new(message.to_owned()));
        let thread = colour_stderr().then(|| {
            let stop = Arc::clone(&stop);
            let text = Arc::clone(&text);
            std::thread::spawn(move || {
                let frames = ['|', '/', '-', '\\'];
                let mut frame = 0;
                while !stop.load(Ordering::Relaxed) {
                    let message = text.lock().map(|text| text.clone()).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{} {message}", frames[frame % frames.len()]);
                    let _ = err.flush();
                    drop(err);
                    frame += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            })
        });
        Self { stop, message: text, thread }
    }

    pub fn set(&self, message: &str) {
        if let Ok(mut text) = self.message.lock() {
            message.clone_into(&mut text);
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_visible_width() {
        let mut table = Table::new(&["NAME", "PHASE"]);
        table.row(vec!["a".into(), paint("Running", Colour::Green, true)]);
        table.row(vec!["longer-name".into(), "Failed".into()]);
        let rendered = table.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "NAME          PHASE");
        assert_eq!(lines[1], "a             \x1b[32mRunning\x1b[0m");
        assert_eq!(lines[2], "longer-name   Failed");
    }
}
