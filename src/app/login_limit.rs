//! The failed-login limit per account, as a pure decision. Every login attempt (and every
//! password change) is counted in the store *before* the password is checked, in fixed
//! windows; a successful one clears the count. Counting first means parallel guesses
//! cannot slip past the limit while earlier ones are still being verified.

use chrono::{DateTime, Duration, Utc};
use nexus_ports::identity::AttemptWindow;
use nexus_ports::{Error, Result};

/// How many failed logins an account may see in a window before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimit {
    /// Attempts allowed per window; 0 turns the limit off.
    pub max_failures: u32,
    pub window: Duration,
}

impl LoginLimit {
    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.max_failures > 0
    }

    /// The start of the oldest window still running at `now`.
    pub fn window_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.window
    }

    /// Whether an attempt just counted in `window` may go on to the password check.
    ///
    /// # Errors
    /// [`Error::RateLimited`] once the window holds more attempts than allowed, with the
    /// time left until it ends.
    pub fn admit(&self, window: &AttemptWindow, now: DateTime<Utc>) -> Result<()> {
        if window.attempts <= self.max_failures {
            return Ok(());
        }
        let wait = (window.started_at + self.window - now).to_std().unwrap_or_default();
        Err(Error::rate_limited("too many failed logins for this account; try again later", wait))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn limit() -> LoginLimit {
        LoginLimit { max_failures: 3, window: Duration::minutes(15) }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()
    }

    #[test]
    fn attempts_up_to_the_limit_go_on() {
        for attempts in 1..=3 {
            assert_eq!(limit().admit(&AttemptWindow { started_at: t0(), attempts }, t0()), Ok(()));
        }
    }

    #[test]
    fn past_the_limit_the_wait_is_what_is_left_of_the_window() {
        let window = AttemptWindow { started_at: t0(), attempts: 4 };
        let later = t0() + Duration::minutes(10) + Duration::milliseconds(500);
        assert_eq!(
            limit().admit(&window, later),
            Err(Error::RateLimited { message: "too many failed logins for this account; try again later".into(), retry_after_secs: 300 })
        );
        let Err(Error::RateLimited { retry_after_secs, .. }) = limit().admit(&window, t0() + Duration::minutes(20)) else { panic!("refused") };
        assert_eq!(retry_after_secs, 1, "never less than a second");
    }

    #[test]
    fn the_window_reaches_back_its_length() {
        assert_eq!(limit().window_from(t0()), t0() - Duration::minutes(15));
        assert!(limit().enabled() && !LoginLimit { max_failures: 0, ..limit() }.enabled());
    }
}
