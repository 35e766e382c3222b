//! A real S3-protocol server for tests, the demo and the benchmark: s3s-fs (objects are
//! files under a root directory) served over HTTP on 127.0.0.1, wrapped so a test can
//! count requests by kind, add latency and inject faults.
//!
//! s3s-fs ignores `If-Match` on GET; the wrapper answers 412 itself by asking the inner
//! server for the current ETag, so the client sees what real S3 would send.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use parking_lot::Mutex;
use s3s::service::{S3Service, S3ServiceBuilder};

/// The only credentials the server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";

struct AllowAll;

#[async_trait::async_trait]
impl s3s::access::S3Access for AllowAll {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ListBuckets,
    List,
    Head,
    Get,
    Put,
    Delete,
    Other,
}

/// Faults to inject; each counter is consumed by the requests it hits.
#[derive(Default)]
pub struct Faults {
    /// Delay before the response headers of every request.
    pub latency_ms: AtomicU64,
    /// The next N requests of `fail_kind` (any kind when None) answer `fail_status`.
    pub fail_next: AtomicU64,
    pub fail_status: AtomicU64,
    pub fail_kind: Mutex<Option<Kind>>,
    /// The next N GET bodies end with a connection error after `cut_after` bytes.
    pub cut_next_gets: AtomicU64,
    pub cut_after: AtomicU64,
    /// The next N GET bodies stop sending after `stall_after` bytes (and never finish).
    pub stall_next_gets: AtomicU64,
    pub stall_after: AtomicU64,
    /// Run once before the next GET is answered (e.g. replace the object after HEAD).
    pub before_next_get: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Pace of GET bodies in bytes per second (0 = unlimited).
    pub get_rate: AtomicU64,
    /// Answer GETs without looking at If-Match, as plain s3s-fs and some S3-compatible
    /// servers do.
    pub ignore_if_match: std::sync::atomic::AtomicBool,
    /// Answer GETs with the whole object whatever Range asks, as a server without range
    /// support does.
    pub ignore_range: std::sync::atomic::AtomicBool,
    /// The server as if stopped with SIGSTOP: connections are still accepted (the kernel
    /// does that), but no request is answered and bodies under way stop, until cleared.
    pub frozen: std::sync::atomic::AtomicBool,
}

impl Faults {
    pub fn fail(&self, kind: Option<Kind>, n: u64, status: u16) {
        *self.fail_kind.lock() = kind;
        self.fail_status.store(status as u64, Ordering::SeqCst);
        self.fail_next.store(n, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    by_kind: Mutex<HashMap<Kind, u64>>,
    gets_by_path: Mutex<HashMap<String, u64>>,
    pub get_bytes: AtomicU64,
}

impl Counters {
    pub fn count(&self, kind: Kind) -> u64 {
        self.by_kind.lock().get(&kind).copied().unwrap_or(0)
    }

    /// GETs seen for one object, by its path-style URL path (`/bucket/key`, encoded).
    pub fn gets_of(&self, bucket: &str, key: &str) -> u64 {
        let path = format!("/{bucket}/{}", encode_key(key));
        self.gets_by_path.lock().get(&path).copied().unwrap_or(0)
    }

    pub fn reset(&self) {
        self.by_kind.lock().clear();
        self.gets_by_path.lock().clear();
        self.get_bytes.store(0, Ordering::SeqCst);
    }
}

struct Shared {
    inner: S3Service,
    /// Where s3s-fs keeps the objects (and its internal info files).
    root: PathBuf,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    /// s3s-fs renames a PUT's file into place before it records the new ETag, so a read
    /// in between would get the new bytes under the old ETag. Real S3 replaces an object
    /// atomically: reads (up to their response headers, when the file is already open)
    /// and writes are kept apart here.
    writes: tokio::sync::RwLock<()>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Serves the objects under `root` (one subdirectory per bucket) on 127.0.0.1 at
    /// `port` (0 picks a free one).
    pub fn start(root: &Path, port: u16) -> std::io::Result<TestServer> {
        TestServer::start_with(
            root,
            port,
            Arc::new(Faults::default()),
            Arc::new(Counters::default()),
        )
    }

    fn start_with(
        root: &Path,
        port: u16,
        faults: Arc<Faults>,
        counters: Arc<Counters>,
    ) -> std::io::Result<TestServer> {
        std::fs::create_dir_all(root)?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        // The SDK signs every request; s3s refuses signed requests without an auth
        // provider. Anonymous requests (the helpers below) are let through by AllowAll.
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.set_access(AllowAll);
        let inner = builder.build();
        let shared = Arc::new(Shared {
            inner,
            root: root.to_path_buf(),
            faults: faults.clone(),
            counters: counters.clone(),
            writes: tokio::sync::RwLock::new(()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3server")
            .enable_all()
            .build()?;
        // Bound from a plain thread: the caller may itself be inside a runtime.
        let rt_handle = rt.handle().clone();
        let listener = std::thread::spawn(move || {
            rt_handle.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        })
        .join()
        .map_err(|_| std::io::Error::other("bind thread panicked"))??;
        let addr = listener.local_addr()?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        rt.spawn(async move {
            let builder = ConnBuilder::new(TokioExecutor::new());
            loop {
                let (socket, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = &mut stop_rx => break,
                };
                // Without this every request on a reused connection waits for Nagle.
                let _ = socket.set_nodelay(true);
                let sh = sh.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let sh = sh.clone();
                    async move { Ok::<_, Infallible>(handle(sh, req).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(socket), svc)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(TestServer {
            addr,
            root: root.to_path_buf(),
            faults,
            counters,
            shared,
            rt: Some(rt),
            stop: Some(stop_tx),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: connections are refused (and those open are dropped) until
    /// [`TestServer::restart`].
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Serves again, on the same port and objects, with the same faults and counters.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let again = TestServer::start_with(
            &self.root,
            self.addr.port(),
            self.faults.clone(),
            self.counters.clone(),
        )?;
        *self = again;
        Ok(())
    }

    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).expect("create bucket dir");
    }

    /// Stores an object through the S3 API (so the server records its MD5 ETag once).
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        self.create_bucket(bucket);
        let data: Bytes = data.into();
        let uri = format!("/{bucket}/{}", encode_key(key));
        let req = Request::builder()
            .method(Method::PUT)
            .uri(&uri)
            .header("host", self.addr.to_string())
            .header("content-length", data.len())
            .body(s3s::Body::from(data))
            .expect("request");
        let sh = self.shared.clone();
        let resp = self
            .block_on(async move {
                let _w = sh.writes.write().await;
                sh.inner.call(req).await
            })
            .expect("put");
        assert!(resp.status().is_success(), "PUT {uri}: {}", resp.status());
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let uri = format!("/{bucket}/{}", encode_key(key));
        let req = Request::builder()
            .method(Method::DELETE)
            .uri(&uri)
            .header("host", self.addr.to_string())
            .body(s3s::Body::empty())
            .expect("request");
        let sh = self.shared.clone();
        let resp = self
            .block_on(async move {
                let _w = sh.writes.write().await;
                sh.inner.call(req).await
            })
            .expect("delete");
        assert!(
            resp.status().is_success(),
            "DELETE {uri}: {}",
            resp.status()
        );
    }

    /// Runs a future on the server's runtime from outside it.
    fn block_on<F: std::future::Future + Send + 'static>(&self, f: F) -> F::Output
    where
        F::Output: Send + 'static,
    {
        let handle = self.rt.as_ref().expect("running").handle().clone();
        std::thread::spawn(move || handle.block_on(f))
            .join()
            .expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Percent-encodes a key for a path-style URL, keeping `/` as separator.
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn classify(method: &Method, path: &str, query: &str) -> Kind {
    let segments = path.trim_start_matches('/');
    let has_key = segments.split_once('/').is_some_and(|(_, k)| !k.is_empty());
    match (method.clone(), segments.is_empty(), has_key) {
        (Method::GET, true, _) => Kind::ListBuckets,
        (Method::GET, false, false) if query.contains("list-type") || query.is_empty() => {
            Kind::List
        }
        (Method::GET, false, true) => Kind::Get,
        (Method::HEAD, false, true) => Kind::Head,
        (Method::PUT, _, true) => Kind::Put,
        (Method::DELETE, _, true) => Kind::Delete,
        _ => Kind::Other,
    }
}

/// The counters as JSON: requests by kind and GET body bytes sent.
fn counters_response(c: &Counters) -> Response<s3s::Body> {
    let body = serde_json::json!({
        "get": c.count(Kind::Get),
        "head": c.count(Kind::Head),
        "list": c.count(Kind::List),
        "put": c.count(Kind::Put),
        "get_bytes": c.get_bytes.load(Ordering::SeqCst),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(s3s::Body::from(body.to_string()))
        .expect("response")
}

fn error_response(status: u16, code: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test server</Message></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/xml")
        .body(s3s::Body::from(body))
        .expect("response")
}

fn take_one(c: &AtomicU64) -> bool {
    c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Where the counters can be read over HTTP (scripts: requests to the origin per host).
pub const COUNTERS_PATH: &str = "/__counters";

async fn handle(sh: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<s3s::Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == COUNTERS_PATH {
        return counters_response(&sh.counters);
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let kind = classify(&method, &path, &query);
    *sh.counters.by_kind.lock().entry(kind).or_default() += 1;
    if kind == Kind::Get {
        *sh.counters
            .gets_by_path
            .lock()
            .entry(path.clone())
            .or_default() += 1;
    }
    while sh.faults.frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = sh.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fail_kind = *sh.faults.fail_kind.lock();
    if fail_kind.is_none_or(|k| k == kind) && take_one(&sh.faults.fail_next) {
        let status = sh.faults.fail_status.load(Ordering::SeqCst) as u16;
        let code = match status {
            503 => "SlowDown",
            500 => "InternalError",
            403 => "AccessDenied",
            404 => "NoSuchKey",
            _ => "InjectedError",
        };
        return error_response(status, code);
    }
    if kind == Kind::Get {
        let hook = sh.faults.before_next_get.lock().take();
        if let Some(hook) = hook {
            hook();
        }
    }
    // Held until the inner server has answered (see `Shared::writes`).
    let _reading = if matches!(kind, Kind::Get | Kind::Head) {
        Some(sh.writes.read().await)
    } else {
        None
    };
    let _writing = if matches!(kind, Kind::Put | Kind::Delete) {
        Some(sh.writes.write().await)
    } else {
        None
    };
    if kind == Kind::Get {
        let if_match = req
            .headers()
            .get("if-match")
            .and_then(|v| v.to_str().ok())
            .filter(|_| !sh.faults.ignore_if_match.load(Ordering::SeqCst));
        if let Some(want) = if_match {
            let want = want.to_string();
            let head = Request::builder()
                .method(Method::HEAD)
                .uri(req.uri().clone())
                .header("host", "localhost")
                .body(s3s::Body::empty())
                .expect("request");
            if let Ok(resp) = sh.inner.call(head).await {
                let current = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if resp.status().is_success() && current.trim_matches('"') != want.trim_matches('"')
                {
                    return error_response(412, "PreconditionFailed");
                }
            }
        }
    }
    let mut req = req.map(s3s::Body::from);
    if kind == Kind::Get && sh.faults.ignore_range.load(Ordering::SeqCst) {
        // Range is a signed header: ask again unsigned (the server lets those through).
        req = Request::builder()
            .method(Method::GET)
            .uri(req.uri().clone())
            .header("host", "localhost")
            .body(s3s::Body::empty())
            .expect("request");
    }
    let resp = match sh.inner.call(req).await {
        Ok(r) => r,
        Err(e) => {
            // s3s turns S3 errors into responses itself; this is a server bug or a
            // malformed request.
            let _ = e;
            return error_response(500, "InternalError");
        }
    };
    if kind == Kind::List && resp.status().is_success() {
        let bucket = path.trim_start_matches('/').trim_end_matches('/');
        return rewrite_listing(resp, query.contains("encoding-type=url"), &sh.root, bucket).await;
    }
    if kind != Kind::Get || !resp.status().is_success() {
        return resp;
    }
    let cut =
        take_one(&sh.faults.cut_next_gets).then(|| sh.faults.cut_after.load(Ordering::SeqCst));
    let stall =
        take_one(&sh.faults.stall_next_gets).then(|| sh.faults.stall_after.load(Ordering::SeqCst));
    let rate = sh.faults.get_rate.load(Ordering::Relaxed);
    let (parts, body) = resp.into_parts();
    let body = FaultyBody {
        inner: body,
        sent: 0,
        cut,
        stall,
        rate,
        started: tokio::time::Instant::now(),
        sleep: None,
        counters: sh.counters.clone(),
        faults: sh.faults.clone(),
    };
    Response::from_parts(parts, s3s::Body::http_body(body))
}

/// A GET body that can be cut off, stalled or paced.
struct FaultyBody {
    inner: s3s::Body,
    sent: u64,
    cut: Option<u64>,
    stall: Option<u64>,
    rate: u64,
    started: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection cut by the test server")
    }
}

impl std::error::Error for Cut {}

impl http_body::Body for FaultyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(s) = &mut this.sleep {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.faults.frozen.load(Ordering::SeqCst) {
            // Look again a little later, as a stopped process would resume.
            let mut s = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
            let _ = s.as_mut().poll(cx);
            this.sleep = Some(s);
            return Poll::Pending;
        }
        if this.cut.is_some_and(|c| this.sent >= c) {
            return Poll::Ready(Some(Err(Box::new(Cut))));
        }
        if this.stall.is_some_and(|s| this.sent >= s) {
            // Never wakes: the client must time out.
            return Poll::Pending;
        }
        if this.rate > 0 {
            let due = Duration::from_secs_f64(this.sent as f64 / this.rate as f64);
            let at = this.started + due;
            if at > tokio::time::Instant::now() {
                let mut s = Box::pin(tokio::time::sleep_until(at));
                if s.as_mut().poll(cx).is_pending() {
                    this.sleep = Some(s);
                    return Poll::Pending;
                }
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let limit = [this.cut, this.stall]
                            .into_iter()
                            .flatten()
                            .map(|l| l.saturating_sub(this.sent))
                            .min();
                        if let Some(l) = limit {
                            data.truncate(l as usize);
                        }
                        this.sent += data.len() as u64;
                        this.counters
                            .get_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        http_body::Frame::data(data)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}

use std::future::Future;

/// s3s-fs echoes `encoding-type=url` but sends keys as they are, and characters XML 1.0
/// cannot carry (\x01, ESC) then break the whole document. Real S3 percent-encodes keys
/// and prefixes (a space as `+`): done here for `Key`, `Prefix`, `StartAfter` and
/// `Delimiter` elements.
/// Makes a listing say what S3's would: each object's ETag (s3s-fs leaves it out), and,
/// for `encoding-type=url`, keys and prefixes percent-encoded.
async fn rewrite_listing(
    resp: Response<s3s::Body>,
    encode: bool,
    root: &Path,
    bucket: &str,
) -> Response<s3s::Body> {
    let (mut parts, mut body) = resp.into_parts();
    let Ok(xml) = body.store_all_limited(64 << 20).await else {
        return error_response(500, "InternalError");
    };
    let xml = String::from_utf8_lossy(&xml).into_owned();
    let tags: Vec<(String, String)> = ["Key", "Prefix", "StartAfter", "Delimiter"]
        .iter()
        .map(|t| (format!("<{t}>"), format!("</{t}>")))
        .collect();
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml.as_str();
    // From one '<' to the next: only elements are looked at, in one pass.
    'outer: while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        for (open, close) in &tags {
            if let Some(after) = rest.strip_prefix(open.as_str())
                && let Some(end) = after.find(close.as_str())
            {
                let name = xml_unescape(&after[..end]);
                out.push_str(open);
                if encode {
                    out.push_str(&s3_url_encode(&name));
                } else {
                    out.push_str(&after[..end]);
                }
                out.push_str(close);
                // Only objects (in <Contents>) have a <Key> in ListObjectsV2.
                if open == "<Key>"
                    && let Some(etag) = stored_etag(root, bucket, &name)
                {
                    out.push_str(&format!("<ETag>&quot;{etag}&quot;</ETag>"));
                }
                rest = &after[end + close.len()..];
                continue 'outer;
            }
        }
        out.push('<');
        rest = &rest[1..];
    }
    out.push_str(rest);
    parts.headers.remove("content-length");
    Response::from_parts(parts, s3s::Body::from(out))
}

/// The ETag s3s-fs recorded for an object, from its internal info file.
fn stored_etag(root: &Path, bucket: &str, key: &str) -> Option<String> {
    // s3s-fs names the file by URL-safe base64 of bucket and key, without padding.
    let b64 = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    let name = format!(".bucket-{}.object-{}.internal.json", b64(bucket), b64(key));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(name)).ok()?).ok()?;
    info.get("e_tag")?.as_str().map(str::to_string)
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// As S3 does for `encoding-type=url`: unreserved characters and `/` as they are, a space
/// as `+`, everything else as %XX.
fn s3_url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
