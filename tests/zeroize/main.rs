//! K2: key material is zeroized when it is dropped, observed rather than assumed.
//!
//! This test binary's global allocator scans every block freed while a scenario runs for a
//! marker (the unique body of a canary key) and counts the blocks that still hold it. Every
//! reallocation made during a scenario moves its block, as any allocator may, so a value that
//! grows and leaves its old buffer behind is caught too. A control scenario shows that a plain
//! `String` holding the key is caught.
//!
//! Scope: our own types (`KeyMaterial`, `Credentials`, the plaintext a vault seals, the local
//! vault's seal, open and fingerprint, the redactor's spellings, JSON deserialization of a key,
//! the injected value built from a catalog template). Copies made by the HTTP stack (hyper and
//! reqwest buffers, the `HeaderValue` or URL the injected value is copied into, the request body)
//! are outside what this test can reach.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use futures_util::FutureExt;
use stockpulse_shared::adapters::embedded::LocalVault;
use stockpulse_shared::domain::redaction::Redactor;
use stockpulse_shared::domain::secret::{Credentials, KeyMaterial};
use stockpulse_shared::ports::{Binding, KeyVault};
use stockpulse_tests::canary;

const MAX_MARKER: usize = 64;
static MARKER: [AtomicU8; MAX_MARKER] = [const { AtomicU8::new(0) }; MAX_MARKER];
static MARKER_LEN: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static FREED_COPIES: AtomicUsize = AtomicUsize::new(0);

/// `System`, plus: while armed, every freed block is searched for the marker (no allocation in
/// here, atomics only), and every reallocation moves.
struct ScanningAllocator;

#[global_allocator]
static ALLOCATOR: ScanningAllocator = ScanningAllocator;

/// Whether the `size` bytes at `ptr` hold the marker.
///
/// # Safety
/// `ptr` must point to `size` bytes of a live allocation.
unsafe fn holds_marker(ptr: *const u8, size: usize) -> bool {
    let len = MARKER_LEN.load(Ordering::SeqCst);
    if len == 0 || size < len {
        return false;
    }
    let mut marker = [0u8; MAX_MARKER];
    for (slot, byte) in marker.iter_mut().zip(MARKER.iter()).take(len) {
        *slot = byte.load(Ordering::Relaxed);
    }
    // Volatile reads: the block may hold bytes never written (spare capacity), which is what
    // this scan is about, and the compiler must not reason them away.
    let at = |i: usize| unsafe { std::ptr::read_volatile(ptr.add(i)) };
    (0..=size - len).any(|start| (0..len).all(|i| at(start + i) == marker[i]))
}

unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) && unsafe { holds_marker(ptr, layout.size()) } {
            FREED_COPIES.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ARMED.load(Ordering::SeqCst) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Always move, and scan the block left behind.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The unique body of a canary key: what the scan looks for.
fn marker_of(key: &str) -> &str {
    key.split_once("CANARY").expect("a canary").1
}

/// Runs `scenario` with the scan armed for `marker` and returns how many freed blocks held it.
fn freed_copies(marker: &str, scenario: impl FnOnce()) -> usize {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    assert!((16..=MAX_MARKER).contains(&marker.len()), "marker length");
    for (slot, byte) in MARKER.iter().zip(marker.bytes()) {
        slot.store(byte, Ordering::SeqCst);
    }
    MARKER_LEN.store(marker.len(), Ordering::SeqCst);
    FREED_COPIES.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    scenario();
    ARMED.store(false, Ordering::SeqCst);
    FREED_COPIES.load(Ordering::SeqCst)
}

fn binding() -> Binding<'static> {
    Binding { workspace: "ws-zeroize", key_id: "k_zeroize", version: 1 }
}

#[test]
fn the_scan_catches_a_plain_string_holding_a_key() {
    let key = canary("sk-proj-");
    let marker = marker_of(&key).to_owned();
    let copies = freed_copies(&marker, || {
        let copy = std::hint::black_box(key);
        drop(copy);
    });
    assert_eq!(copies, 1, "the control: a plain String freed with the key in it is seen");
    // A growing buffer leaves its old block behind, and that is seen too.
    let key = canary("sk-proj-");
    let marker = marker_of(&key).to_owned();
    let copies = freed_copies(&marker, || {
        let mut grown = Vec::with_capacity(key.len());
        grown.extend_from_slice(key.as_bytes());
        grown.push(b'!');
        drop(KeyMaterial::new(String::from_utf8(std::hint::black_box(grown)).unwrap()));
        drop(KeyMaterial::new(key));
    });
    assert_eq!(copies, 1, "the block a growing buffer left behind is seen, the zeroized ones are not");
}

#[test]
fn key_material_and_credentials_leave_no_copy_when_dropped() {
    let key = canary("sk-proj-");
    let secret = canary("secret-");
    let marker = marker_of(&key).to_owned();
    let copies = freed_copies(&marker, || {
        let material = KeyMaterial::new(key);
        assert!(material.len() > 40);
        drop(std::hint::black_box(material));
        let mut credentials = Credentials::new();
        credentials.insert("api_key", KeyMaterial::new(canary_copy(&marker)));
        credentials.insert("secret_key", KeyMaterial::new(secret));
        credentials.remove("api_key");
        credentials.insert("api_key", KeyMaterial::new(canary_copy(&marker)));
        drop(std::hint::black_box(credentials));
    });
    assert_eq!(copies, 0, "KeyMaterial and Credentials left {copies} freed blocks holding the key");
}

/// A key holding the marker, built straight into a buffer that becomes the key material.
fn canary_copy(marker: &str) -> String {
    let mut value = String::with_capacity(8 + marker.len());
    value.push_str("sk-copy-");
    value.push_str(marker);
    value
}

#[test]
fn sealing_opening_and_fingerprinting_in_the_local_vault_leave_no_copy() {
    let vault = LocalVault::from_master_key(&[9; 32]);
    // Short and long values, several fields, and a value long enough that the sealed plaintext
    // outgrows a first guess at its size.
    let key = canary("sk-proj-");
    let marker = marker_of(&key).to_owned();
    let copies = freed_copies(&marker, || {
        for filler in [0usize, 40, 150, 700] {
            let mut long = String::with_capacity(8 + marker.len() + filler);
            long.push_str("sk-long-");
            long.push_str(&marker);
            long.extend(std::iter::repeat_n('x', filler));
            let mut credentials = Credentials::new();
            credentials.insert("api_key", KeyMaterial::new(long));
            credentials.insert("organization_id", KeyMaterial::new(canary_copy(&marker)));
            let sealed = vault.seal(binding(), &credentials).now_or_never().expect("ready").expect("sealed");
            let opened = vault.open(binding(), &sealed).now_or_never().expect("ready").expect("opened");
            assert_eq!(opened.get("api_key").map(KeyMaterial::len), credentials.get("api_key").map(KeyMaterial::len));
            assert!(opened.get("api_key").unwrap().expose() == credentials.get("api_key").unwrap().expose());
            let fingerprint = vault.fingerprint(opened.get("api_key").unwrap());
            assert_eq!(fingerprint.len(), 32);
            drop(std::hint::black_box((credentials, opened, sealed)));
        }
    });
    drop(key);
    assert_eq!(copies, 0, "sealing, opening or fingerprinting left {copies} freed blocks holding the key");
}

#[test]
fn the_redactors_spellings_leave_no_copy() {
    // Canary bodies are alphanumeric: with a prefix of the same kind, the key's raw and
    // percent-encoded spellings are equal.
    for prefix in ["sk-proj-", "AV"] {
        let key = canary(prefix);
        let marker = marker_of(&key).to_owned();
        let copies = freed_copies(&marker, || {
            let mut credentials = Credentials::new();
            credentials.insert("api_key", KeyMaterial::new(key));
            let redactor = Redactor::new(&credentials);
            let text = format!("echo {}", credentials.get("api_key").unwrap().expose().len());
            drop(redactor.text(&text));
            let mut stream = redactor.stream();
            drop(stream.push(b"no key here"));
            drop(stream.finish());
            drop(std::hint::black_box((stream, redactor, credentials)));
        });
        assert_eq!(copies, 0, "the redactor of a key with prefix {prefix} left {copies} freed blocks holding the key");
    }
}

#[test]
fn filling_every_injection_template_of_the_catalog_leaves_no_copy() {
    // The header or query value the proxy and the connection test build around a key (`Bearer
    // {value}`, ...): our own copy is wiped; what the HTTP client copies from it is out of reach.
    // The catalog is loaded first: blocks its parsing frees may reuse memory that held the key
    // before the scan was armed (the canary was built with plain strings).
    let injections: Vec<_> = stockpulse_shared::domain::catalog::catalog().providers.iter().flat_map(|p| &p.auth).collect();
    let key = canary("sk-proj-");
    let marker = marker_of(&key).to_owned();
    let copies = freed_copies(&marker, || {
        for injection in &injections {
            let filled = injection.fill(&key);
            assert!(filled.contains(key.as_str()));
            drop(std::hint::black_box(filled));
        }
    });
    assert_eq!(copies, 0, "filling the catalog's injection templates left {copies} freed blocks holding the key");
}

#[test]
fn key_material_read_from_json_leaves_no_copy() {
    let key = canary("sk-proj-");
    let marker = marker_of(&key).to_owned();
    // The JSON text itself is made and freed outside the scan.
    let body = format!("{{\"api_key\":\"{key}\"}}").into_bytes();
    let copies = freed_copies(&marker, || {
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            api_key: KeyMaterial,
        }
        let parsed: Body = serde_json::from_slice(&body).expect("JSON");
        drop(std::hint::black_box(parsed));
        let credentials = Credentials::from_plaintext(&body).expect("a credential set");
        drop(std::hint::black_box(credentials));
    });
    assert_eq!(copies, 0, "reading key material from JSON left {copies} freed blocks holding the key");
}

/// serde_json unescapes a string that holds an escape (`\"`, `\\`, a control character) in a
/// scratch buffer of its own, which it frees without zeroizing; `Credentials::from_plaintext`
/// (every vault's open) therefore reads values in place and unescapes them itself. A request
/// body's `KeyMaterial` still goes through serde_json (the body is an HTTP-layer copy anyway).
#[test]
fn values_with_json_escapes_leave_no_copy() {
    let key = canary("pass\\\"word-");
    let marker = marker_of(&key).to_owned();
    let mut credentials = Credentials::new();
    credentials.insert("password", KeyMaterial::new(key));
    let plaintext = credentials.to_plaintext();
    let copies = freed_copies(&marker, || {
        let back = Credentials::from_plaintext(&plaintext).expect("a credential set");
        drop(std::hint::black_box(back));
    });
    assert_eq!(copies, 0, "opening a value with JSON escapes left {copies} freed blocks holding it");
}
