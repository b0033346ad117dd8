//! The per-address request rate of the `/auth` routes: a generic cell rate algorithm
//! (a token bucket kept as one timestamp per client). A client may send `per_minute`
//! requests at once, then one every `60 s / per_minute`; past that it is refused with the
//! time until it may send again.
//!
//! Clients are keyed by address: an IPv4 address, or the /64 network of an IPv6 one (what
//! one host usually holds). The state is this process's own: each replica allows the rate.
//! Buckets that have refilled are swept away, so the map holds only recent clients.
//!
//! The client's address is the peer's, unless the peer is a trusted proxy: only then is
//! `X-Forwarded-For` read, from the right, past the trusted proxies, to the first address
//! that is not one (anything a client wrote further left is its own claim).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nexus_ports::{Error, Result};

const MINUTE: Duration = Duration::from_secs(60);
/// Past this many tracked clients, refilled buckets are swept before adding one.
const SWEEP_AT: usize = 10_000;
/// The most clients tracked; past it (after a sweep) new clients are let through untracked.
const MAX_CLIENTS: usize = 200_000;

/// The decision for one request, given the bucket's theoretical arrival time `tat` (the
/// moment it is empty again), `now`, the `interval` between requests and the `tolerance`
/// (how far ahead of now `tat` may run: the burst). `Ok` carries the new `tat`; `Err` how
/// long until a request would be allowed.
pub(crate) fn gcra(tat: Duration, now: Duration, interval: Duration, tolerance: Duration) -> Result<Duration, Duration> {
    let tat = tat.max(now);
    let ahead = tat - now;
    if ahead > tolerance { Err(ahead - tolerance) } else { Ok(tat + interval) }
}

/// How a client is told apart: its IPv4 address, or its IPv6 address's /64 network.
pub(crate) fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The address a request comes from: `peer`, or, when `peer` is one of the `trusted`
/// proxies, the nearest address of `X-Forwarded-For` (`forwarded`) that is not a trusted
/// proxy. A malformed entry stops the walk at the last trusted hop.
pub fn client_address(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    let mut client = peer;
    if !is_trusted(&client) {
        return client;
    }
    for hop in forwarded.unwrap_or_default().rsplit(',').map(str::trim).filter(|hop| !hop.is_empty()) {
        let Ok(address) = hop.parse::<IpAddr>() else { break };
        client = address;
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// The `/auth` routes' rate limit per client address.
pub struct AuthThrottle {
    limiter: Option<AddressLimiter>,
    trusted_proxies: Vec<IpNet>,
}

impl AuthThrottle {
    /// `per_minute` requests per client address (0: no limit), believing
    /// `X-Forwarded-For` only from `trusted_proxies`.
    pub fn new(per_minute: u32, trusted_proxies: Vec<IpNet>) -> Self {
        Self { limiter: AddressLimiter::new(per_minute), trusted_proxies }
    }

    /// The client a request from `peer` (with its `X-Forwarded-For`, if any) comes from.
    #[must_use]
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        client_address(peer, forwarded, &self.trusted_proxies)
    }

    /// Counts a request from `peer` (with its `X-Forwarded-For`, if any).
    ///
    /// # Errors
    /// [`Error::RateLimited`] when its client is over the rate.
    pub fn check(&self, peer: IpAddr, forwarded: Option<&str>) -> Result<()> {
        match &self.limiter {
            Some(limiter) => limiter.check(client_address(peer, forwarded, &self.trusted_proxies)),
            None => Ok(()),
        }
    }
}

/// A per-address limiter; `per_minute` 0 lets everything through.
pub struct AddressLimiter {
    interval: Duration,
    tolerance: Duration,
    origin: Instant,
    buckets: Mutex<HashMap<IpAddr, Duration>>,
}

impl AddressLimiter {
    /// `per_minute` requests per client address per minute; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Option<Self> {
        (per_minute > 0).then(|| {
            let interval = MINUTE / per_minute;
            Self { interval, tolerance: MINUTE.saturating_sub(interval), origin: Instant::now(), buckets: Mutex::default() }
        })
    }

    /// Counts a request from `client` now.
    ///
    /// # Errors
    /// [`Error::RateLimited`] with the wait, when the client is over its rate.
    pub fn check(&self, client: IpAddr) -> Result<()> {
        self.check_at(client, Instant::now())
    }

    /// Counts a request from `client` at `at`.
    ///
    /// # Errors
    /// [`Error::RateLimited`] with the wait, when the client is over its rate.
    pub fn check_at(&self, client: IpAddr, at: Instant) -> Result<()> {
        let now = at.saturating_duration_since(self.origin);
        let key = client_key(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= SWEEP_AT {
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() >= MAX_CLIENTS {
                tracing::warn!(clients = buckets.len(), "too many clients to track for the auth rate limit; letting a new one through");
                return Ok(());
            }
        }
        let tat = buckets.get(&key).copied().unwrap_or(now);
        match gcra(tat, now, self.interval, self.tolerance) {
            Ok(next) => {
                buckets.insert(key, next);
                Ok(())
            }
            Err(wait) => Err(Error::rate_limited("too many requests from this address; slow down", wait)),
        }
    }

    /// How many clients are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_full_bucket_allows_a_burst_then_one_per_interval() {
        // 6 per minute: one every 10 s, up to 6 at once.
        let (interval, tolerance) = (10 * SEC, 50 * SEC);
        let mut tat = Duration::ZERO;
        let now = 100 * SEC;
        for _ in 0..6 {
            tat = gcra(tat, now, interval, tolerance).expect("within the burst");
        }
        assert_eq!(gcra(tat, now, interval, tolerance), Err(10 * SEC), "the seventh waits one interval");
        assert_eq!(gcra(tat, now + 4 * SEC, interval, tolerance), Err(6 * SEC));
        let tat = gcra(tat, now + 10 * SEC, interval, tolerance).expect("one more after the interval");
        assert_eq!(gcra(tat, now + 10 * SEC, interval, tolerance), Err(10 * SEC));
        assert_eq!(gcra(tat, now + 120 * SEC, interval, tolerance), Ok(now + 130 * SEC), "an idle bucket refills");
    }

    #[test]
    fn the_limiter_counts_per_client_and_says_how_long_to_wait() {
        let limiter = AddressLimiter::new(3).unwrap();
        let start = limiter.origin;
        let (a, b) = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        for _ in 0..3 {
            limiter.check_at(a, start).unwrap();
        }
        assert_eq!(
            limiter.check_at(a, start),
            Err(Error::RateLimited { message: "too many requests from this address; slow down".into(), retry_after_secs: 20 })
        );
        limiter.check_at(b, start).expect("another client has its own bucket");
        limiter.check_at(a, start + 20 * SEC).expect("refilled by one");
        assert!(AddressLimiter::new(0).is_none(), "0 turns it off");
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let proxies = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let chain = Some("203.0.113.9, 198.51.100.4, 10.1.1.1");
        // An untrusted peer: its header is a claim, ignored.
        assert_eq!(client_address(ip("192.0.2.1"), chain, &proxies), ip("192.0.2.1"));
        assert_eq!(client_address(ip("192.0.2.1"), chain, &[]), ip("192.0.2.1"));
        // A trusted peer: walk from the right past trusted hops; the first other is the client.
        assert_eq!(client_address(ip("10.0.0.2"), chain, &proxies), ip("198.51.100.4"), "what the client wrote further left is not believed");
        assert_eq!(client_address(ip("10.0.0.2"), Some("10.9.9.9, 10.1.1.1"), &proxies), ip("10.9.9.9"), "only proxies: the farthest");
        assert_eq!(client_address(ip("10.0.0.2"), None, &proxies), ip("10.0.0.2"), "no header: the proxy itself");
        assert_eq!(client_address(ip("10.0.0.2"), Some("garbage, 10.1.1.1"), &proxies), ip("10.1.1.1"), "malformed: stop at the last trusted hop");
        assert_eq!(client_address(ip("2001:db8::1"), Some(" 2001:db9::7 "), &proxies), ip("2001:db9::7"));
    }

    #[test]
    fn the_throttle_limits_the_resolved_client() {
        let throttle = AuthThrottle::new(1, nets(&["127.0.0.1/32"]));
        let local = "127.0.0.1".parse().unwrap();
        throttle.check(local, Some("192.0.2.1")).unwrap();
        throttle.check(local, Some("192.0.2.2")).expect("another client behind the same proxy");
        assert!(matches!(throttle.check(local, Some("192.0.2.1")), Err(Error::RateLimited { .. })));
        let off = AuthThrottle::new(0, vec![]);
        for _ in 0..100 {
            off.check(local, None).unwrap();
        }
    }

    #[test]
    fn ipv6_clients_are_their_64_network_and_mapped_ipv4_is_ipv4() {
        let host: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(host), client_key(neighbour));
        assert_ne!(client_key(host), client_key(other));
        assert_eq!(client_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refilled_buckets_are_swept_when_the_map_grows() {
        let limiter = AddressLimiter::new(60).unwrap();
        let start = limiter.origin;
        for i in 0..SWEEP_AT {
            let octets = u32::try_from(i).unwrap().to_be_bytes();
            limiter.check_at(IpAddr::V4(Ipv4Addr::from(octets)), start).unwrap();
        }
        assert_eq!(limiter.tracked(), SWEEP_AT);
        // A minute later every bucket has refilled: a new client sweeps them away.
        limiter.check_at(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), start + 61 * SEC).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }
}
