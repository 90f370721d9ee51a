//! The upstream HTTP connection pools: one shared reqwest client, plus one per serving runtime
//! when the gateway serves thread-per-core, so a request never borrows a connection whose task
//! lives on another thread (no cross-thread wake-ups on the hot path).
//!
//! A serving thread names its slot once ([`enter_slot`]); every use of the client on that
//! thread then reaches that slot's pool. Threads without a slot (the multi-thread runtime,
//! background tasks) use the shared pool, exactly as before per-core serving existed.
//!
//! Every client is built from one TLS configuration made once ([`tls_config`]: the system's CA
//! store is read once, not once per client), and the clients of the serving cores are built up
//! front: the first call on a core does not pay for building its client.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Serving runtimes that get a pool of their own; threads beyond it share the common pool.
pub const MAX_SLOTS: usize = 64;

thread_local! {
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    static DIRECT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as serving runtime `slot` (called once, when the thread starts).
pub fn enter_slot(slot: usize) {
    SLOT.with(|s| s.set((slot < MAX_SLOTS).then_some(slot)));
}

/// On this (slotted) thread, plain-HTTP upstream POSTs go through hyper directly (`h1`).
pub fn use_direct_h1(on: bool) {
    DIRECT.with(|d| d.set(on));
}

/// Whether this thread sends plain-HTTP upstream POSTs through `h1`.
pub fn direct_h1() -> bool {
    current_slot().is_some() && DIRECT.with(Cell::get)
}

fn current_slot() -> Option<usize> {
    SLOT.with(Cell::get)
}

/// The upstream clients: `Deref`s to the one of the calling thread's runtime.
pub struct Pools {
    connect_timeout: Duration,
    /// What every client of this set is built with (cloning it shares the certificate verifier).
    tls: rustls::ClientConfig,
    shared: reqwest::Client,
    per_slot: Box<[OnceLock<reqwest::Client>]>,
}

impl Pools {
    /// The shared client and one per serving core (one per CPU this process may use, as
    /// `http::percore` serves), all from one TLS configuration.
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let tls = tls_config()?;
        let shared = build(connect_timeout, &tls).map_err(|e| e.to_string())?;
        let per_slot: Box<[OnceLock<reqwest::Client>]> =
            (0..MAX_SLOTS).map(|_| OnceLock::new()).collect();
        let cores = serving_cores();
        for cell in &per_slot[..cores] {
            let client = build(connect_timeout, &tls).map_err(|e| e.to_string())?;
            let _ = cell.set(client);
        }
        Ok(Self {
            connect_timeout,
            tls,
            shared,
            per_slot,
        })
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The calling thread's pool (built at start for the serving cores, on first use for a
    /// slot beyond them).
    pub fn current(&self) -> &reqwest::Client {
        let Some(cell) = current_slot().and_then(|i| self.per_slot.get(i)) else {
            return &self.shared;
        };
        if let Some(client) = cell.get() {
            return client;
        }
        // Building can only fail where the shared client's build (same settings) did not,
        // which reqwest does not do; fall back to the shared pool rather than fail a request.
        match build(self.connect_timeout, &self.tls) {
            Ok(client) => cell.get_or_init(|| client),
            Err(_) => &self.shared,
        }
    }
}

impl Deref for Pools {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        self.current()
    }
}

/// The slots that serving threads take: one per CPU this process may use (what
/// `http::percore::default_cores` counts; this layer does not use the HTTP one).
fn serving_cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_SLOTS)
}

/// The TLS configuration reqwest builds for itself by default (rustls: the installed crypto
/// provider, TLS 1.2 and 1.3, the platform verifier over the system's CA store, ALPN `h2` and
/// `http/1.1`), made once: each client reqwest builds alone reads the CA store again (~45 M
/// instructions in a release build).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

fn build(
    connect_timeout: Duration,
    tls: &rustls::ClientConfig,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .connect_timeout(connect_timeout)
        // A redirect would carry the caller's injected credentials to wherever the upstream
        // points (reqwest only strips `Authorization` and cookies across hosts): an upstream
        // answers, or its 3xx is an error. Following also re-parsed the URL on every call.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slotted_thread_gets_its_own_pool_and_others_share_one() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pools = std::sync::Arc::new(Pools::new(Duration::from_secs(1)).expect("client"));
        let shared = pools.current() as *const reqwest::Client as usize;
        let on = |slot: Option<usize>| {
            let pools = pools.clone();
            std::thread::spawn(move || {
                if let Some(s) = slot {
                    enter_slot(s);
                }
                let a = pools.current() as *const reqwest::Client as usize;
                let via_deref: &reqwest::Client = &pools;
                let b = via_deref as *const reqwest::Client as usize;
                assert_eq!(a, b, "the same thread always reaches the same pool");
                a
            })
            .join()
            .expect("thread")
        };
        assert_eq!(on(None), shared);
        let zero = on(Some(0));
        let one = on(Some(1));
        assert_ne!(zero, shared);
        assert_ne!(one, shared);
        assert_ne!(zero, one);
        assert_eq!(on(Some(0)), zero, "a slot keeps its pool across threads");
        assert_eq!(
            on(Some(MAX_SLOTS)),
            shared,
            "beyond the slots: the shared pool"
        );
    }

    #[test]
    fn the_serving_cores_clients_are_built_up_front_and_others_on_first_use() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pools = Pools::new(Duration::from_secs(1)).expect("client");
        let cores = serving_cores();
        assert!(pools.per_slot[..cores].iter().all(|c| c.get().is_some()));
        assert!(pools.per_slot[cores..].iter().all(|c| c.get().is_none()));
        if cores < MAX_SLOTS {
            std::thread::scope(|s| {
                s.spawn(|| {
                    enter_slot(cores);
                    let _ = pools.current();
                });
            });
            assert!(pools.per_slot[cores].get().is_some());
        }
    }
}
