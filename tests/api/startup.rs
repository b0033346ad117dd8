//! Configuration out of range is refused at start: the binary exits non-zero with a
//! message naming the option, before it touches the database.

use std::process::Command;

/// Runs `nexus` with `args` (no `NEXUS_*` variable from the environment) on a SQLite file
/// that must not exist afterwards; returns the exit code and everything it printed.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let db = std::env::temp_dir().join(format!("nexus-startup-{}.db", uuid::Uuid::new_v4().simple()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("NEXUS_")) {
        command.env_remove(name);
    }
    let output = command
        .args(["--listen", "127.0.0.1:0", "--database-url", &format!("sqlite://{}", db.display())])
        .args(args)
        .env("NEXUS_LOG", "info")
        .output()
        .expect("nexus runs");
    assert!(!db.exists(), "refused before the database was created");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), printed)
}

#[test]
fn out_of_range_configuration_stops_the_start_with_a_clear_message() {
    let cases: [(&[&str], &str); 7] = [
        (&["--refresh-ttl", "1000000d"], "NEXUS_REFRESH_TTL (--refresh-ttl) must be between 1s and 365d; got 1000000d"),
        (&["--resync", "1000d"], "NEXUS_RESYNC (--resync) must be between 100ms and 1d; got 1000d"),
        (&["--jwt-secret", "too-short"], "NEXUS_JWT_SECRET (--jwt-secret) must be between 32 and 4096; got 9"),
        (&["--max-tenants", "0"], "NEXUS_MAX_TENANTS (--max-tenants) must be between 1 and 100000; got 0"),
        (&["--session-max", "400d"], "NEXUS_SESSION_MAX (--session-max) must be between 1s and 365d; got 400d"),
        (&["--lease-duration", "10m"], "NEXUS_LEASE_DURATION (--lease-duration) must be between 1s and 5m; got 10m"),
        (&["--lease-renew", "5s"], "NEXUS_LEASE_RENEW (--lease-renew) must be at most a third of NEXUS_LEASE_DURATION (--lease-duration), 8s; got 5s"),
    ];
    for (args, message) in cases {
        let (code, printed) = refused(args);
        assert_eq!(code, Some(1), "{args:?}: {printed}");
        assert!(printed.contains(message), "{args:?} should say {message:?}: {printed}");
        assert!(!printed.contains("panicked"), "{printed}");
    }
}

#[test]
fn values_that_do_not_parse_are_refused_by_the_parser() {
    for args in [&["--trusted-proxies", "10.0.0.0/33"][..], &["--auth-rate", "lots"], &["--session-max", "forever"], &["--cluster", "etcd"]] {
        let (code, printed) = refused(args);
        assert_eq!(code, Some(2), "{args:?}: {printed}");
        assert!(printed.contains("invalid value"), "{args:?}: {printed}");
    }
}
