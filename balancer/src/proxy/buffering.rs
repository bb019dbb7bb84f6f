//! Bodies buffered past memory, so a slow client holds no backend
//! connection (nginx's `proxy_request_buffering` and `proxy_buffering`,
//! memory first, then an unlinked file in `buffer_dir`):
//!
//! * a request body up to `buffer_body` + `buffer_body_file` bytes is read
//!   whole before a backend is picked ([`spool_request`]); the attempts
//!   replay it from memory and the file ([`Replay`]);
//! * a response body is read from the backend ahead of the client
//!   ([`pump`]) by up to `buffer_response` bytes in memory and
//!   `buffer_response_file` in a file, and the backend's connection goes
//!   back to its pool (and its place under `max_connections_per_backend`
//!   is freed) once the backend has sent it all, however slowly the client
//!   reads.
//!
//! All files of the process together hold at most
//! `limits.buffer_files_total` bytes ([`FileBudget`]); past it a body
//! streams as it would without a file. File IO runs on tokio's blocking
//! pool, in chunks of [`FILE_CHUNK`].

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::BoxError;

/// Bytes per file write (batched) and per file read.
pub const FILE_CHUNK: usize = 128 * 1024;

/// How long the pump waits for a reader that has not taken what is in
/// memory before it writes to a file: a client reading at network speed
/// never makes a file.
pub const SPILL_AFTER: Duration = Duration::from_millis(50);

/// Bytes held in buffer files by the whole process, against
/// `limits.buffer_files_total`.
#[derive(Debug, Default)]
pub struct FileBudget {
    used: AtomicU64,
    /// `balancer_buffer_file_bytes`, when metrics are on.
    gauge: Option<prometheus::IntGauge>,
}

impl FileBudget {
    pub fn new(gauge: Option<prometheus::IntGauge>) -> Self {
        Self {
            used: AtomicU64::new(0),
            gauge,
        }
    }

    /// Bytes in buffer files now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: u64, max: u64) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= max)
            })
            .is_ok();
        if ok {
            if let Some(g) = &self.gauge {
                g.add(n as i64);
            }
        }
        ok
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.sub(n as i64);
        }
    }
}

/// Where a body's file goes and how much all files may hold.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: Arc<Path>,
    pub budget: Arc<FileBudget>,
    /// `limits.buffer_files_total`.
    pub total: u64,
}

/// Why a body could not go (further) into a file.
#[derive(Debug)]
enum Spill {
    /// `limits.buffer_files_total` is reached.
    Full,
    Io(io::Error),
}

/// A buffer file: unlinked from the start (gone when the last handle
/// closes), appended by one writer, read at offsets by any number of
/// readers. Its bytes count against the budget until it is dropped.
#[derive(Debug)]
pub struct BufferFile {
    file: Arc<File>,
    len: u64,
    files: Files,
}

impl BufferFile {
    fn create(files: &Files) -> io::Result<Self> {
        Ok(Self {
            file: Arc::new(tempfile::tempfile_in(&files.dir)?),
            len: 0,
            files: files.clone(),
        })
    }

    /// Appends `data` at the end, once the budget has room for it.
    async fn append(&mut self, data: Bytes) -> Result<(), Spill> {
        let n = data.len() as u64;
        if !self.files.budget.reserve(n, self.files.total) {
            return Err(Spill::Full);
        }
        // Counted from here on: released with the file, even if the
        // write fails half way.
        let at = self.len;
        self.len += n;
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || file.write_all_at(&data, at))
            .await
            .map_err(|e| Spill::Io(io::Error::other(e)))?
            .map_err(Spill::Io)
    }
}

impl Drop for BufferFile {
    fn drop(&mut self) {
        self.files.budget.release(self.len);
    }
}

/// At most one read of a buffer file under way, on the blocking pool.
#[derive(Debug, Default)]
struct FileRead(Option<JoinHandle<io::Result<Bytes>>>);

impl FileRead {
    /// Starts reading `len` bytes at `at`.
    fn start(&mut self, file: &Arc<File>, at: u64, len: usize) {
        let file = Arc::clone(file);
        self.0 = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at)?;
            Ok(Bytes::from(buf))
        }));
    }

    /// The read under way, once done; `Ready(None)` when none is.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let Some(reading) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let r = ready!(Pin::new(reading).poll(cx));
        self.0 = None;
        Poll::Ready(Some(r.map_err(io::Error::other).and_then(|r| r)))
    }
}

// ---------------------------------------------------------------------
// Request bodies

/// A request body read whole: its first bytes in memory, the rest in a file.
#[derive(Debug)]
pub struct Spooled {
    head: Bytes,
    file: Option<BufferFile>,
}

impl Spooled {
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.file.as_ref().map_or(0, |f| f.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any of it is in a file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }
}

/// What [`spool_request`] made of a body.
#[derive(Debug)]
pub enum Spooling<B> {
    /// Read whole.
    Whole(Spooled),
    /// Too big for the limits (or the budget was full, or a file could
    /// not be made): what was read, then the rest as it comes.
    Partial(Spooled, B),
}

/// Reads `body` into memory (up to `memory` bytes) and then a file, up to
/// `max` bytes in all. A body that fails (a `[limits]` limit, a broken
/// upload) returns its error.
pub async fn spool_request<B>(
    mut body: B,
    memory: u64,
    max: u64,
    files: &Files,
) -> Result<Spooling<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut head = BytesMut::new();
    let mut file: Option<BufferFile> = None;
    let mut batch = BytesMut::new();
    let mut total = 0u64;
    let partial = |head: BytesMut, file| Spooled {
        head: head.freeze(),
        file,
    };
    loop {
        if body.is_end_stream() {
            break;
        }
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            // Trailers: HTTP/1.1 backends are not sent request trailers.
            continue;
        };
        total += data.len() as u64;
        // Memory only until the first piece that does not fit: after it,
        // everything goes to the file, in order.
        if file.is_none() && batch.is_empty() && head.len() as u64 + data.len() as u64 <= memory {
            head.extend_from_slice(&data);
            continue;
        }
        batch.extend_from_slice(&data);
        if total > max {
            // Too big to hold: what is here goes first, the rest streams.
            let spilled = flush(&mut file, &mut batch, files).await;
            if spilled.is_err() {
                // Nothing lost: the batch stays in memory, in front.
                head.extend_from_slice(&batch.split());
            }
            return Ok(Spooling::Partial(partial(head, file), body));
        }
        if batch.len() >= FILE_CHUNK {
            if let Err(e) = flush(&mut file, &mut batch, files).await {
                log_spill(&e, "request");
                head.extend_from_slice(&batch.split());
                return Ok(Spooling::Partial(partial(head, file), body));
            }
        }
    }
    if let Err(e) = flush(&mut file, &mut batch, files).await {
        log_spill(&e, "request");
        head.extend_from_slice(&batch.split());
    }
    Ok(Spooling::Whole(partial(head, file)))
}

/// Writes `batch` to the file (made on first use); on success `batch` is empty.
async fn flush(
    file: &mut Option<BufferFile>,
    batch: &mut BytesMut,
    files: &Files,
) -> Result<(), Spill> {
    if batch.is_empty() {
        return Ok(());
    }
    let f = match file {
        Some(f) => f,
        None => {
            if files.total == 0 || files.budget.used() + batch.len() as u64 > files.total {
                return Err(Spill::Full);
            }
            file.insert(BufferFile::create(files).map_err(Spill::Io)?)
        }
    };
    f.append(batch.split().freeze()).await
}

fn log_spill(e: &Spill, body: &str) {
    match e {
        Spill::Full => {
            if let Some(unlogged) = FULL_WARNED.should_warn() {
                tracing::warn!(
                    body,
                    not_logged_since_last_line = unlogged,
                    "buffer files at limits.buffer_files_total: a body streams instead"
                );
            }
        }
        Spill::Io(e) => {
            if let Some(unlogged) = IO_WARNED.should_warn() {
                tracing::warn!(body, error = %e, not_logged_since_last_line = unlogged, "cannot write a buffer file in buffer_dir: a body streams instead");
            }
        }
    }
}

static FULL_WARNED: crate::logging::WarnEvery = crate::logging::WarnEvery::new();
static IO_WARNED: crate::logging::WarnEvery = crate::logging::WarnEvery::new();

/// One attempt's copy of a [`Spooled`] body: memory, then the file.
#[derive(Debug)]
pub struct Replay {
    spooled: Arc<Spooled>,
    /// Bytes handed out so far.
    at: u64,
    reading: FileRead,
}

impl Replay {
    pub fn new(spooled: Arc<Spooled>) -> Self {
        Self {
            spooled,
            at: 0,
            reading: FileRead::default(),
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(r) = ready!(this.reading.poll(cx)) {
            return Poll::Ready(Some(match r {
                Ok(b) => {
                    this.at += b.len() as u64;
                    Ok(Frame::data(b))
                }
                Err(e) => Err(e.into()),
            }));
        }
        let head = this.spooled.head.len() as u64;
        if this.at < head {
            this.at = head;
            return Poll::Ready(Some(Ok(Frame::data(this.spooled.head.clone()))));
        }
        let Some(file) = &this.spooled.file else {
            return Poll::Ready(None);
        };
        let off = this.at - head;
        if off >= file.len {
            return Poll::Ready(None);
        }
        let n = (file.len - off).min(FILE_CHUNK as u64) as usize;
        this.reading.start(&file.file, off, n);
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.spooled.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.spooled.len() - self.at)
    }
}

/// What was read of a body, then the rest of it as it comes.
#[derive(Debug)]
pub struct Chain<B> {
    first: Option<Replay>,
    rest: B,
    /// Bytes still to come, when the whole body's length is known.
    left: Option<u64>,
}

impl<B: Body> Chain<B> {
    pub fn new(first: Spooled, rest: B) -> Self {
        let left = rest.size_hint().exact().map(|n| n + first.len());
        Self {
            first: Some(Replay::new(Arc::new(first))),
            rest,
            left,
        }
    }
}

impl<B> Body for Chain<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match this.first.as_mut() {
            Some(first) => match ready!(Pin::new(first).poll_frame(cx)) {
                None => {
                    this.first = None;
                    return Pin::new(this).poll_frame(cx);
                }
                some => some,
            },
            None => ready!(Pin::new(&mut this.rest).poll_frame(cx)).map(|r| r.map_err(Into::into)),
        };
        if let (Some(Ok(frame)), Some(left)) = (&polled, this.left.as_mut()) {
            if let Some(d) = frame.data_ref() {
                *left = left.saturating_sub(d.len() as u64);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------
// Response bodies

/// How far a response is read ahead of its client.
#[derive(Debug, Clone)]
pub struct Ahead {
    /// `pool.buffer_response`.
    pub memory: u64,
    /// `pool.buffer_response_file`.
    pub file: u64,
    pub files: Files,
}

/// The pump and its reader's shared state.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The reader took something, or left.
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    mem: VecDeque<Bytes>,
    mem_bytes: u64,
    /// Appended by the pump; readable up to `file_len`.
    file: Option<Arc<File>>,
    /// The file's budget, handed over by the pump when it ends, so it
    /// counts until the reader is done with it.
    owned: Option<BufferFile>,
    file_len: u64,
    /// Read by the reader.
    file_read: u64,
    /// New data goes to the file (it has data the reader has not read).
    spilling: bool,
    end: Option<End>,
    /// The reader, waiting for data.
    waker: Option<Waker>,
    /// The reader was dropped (client gone).
    gone: bool,
}

#[derive(Debug)]
enum End {
    Done(Option<HeaderMap>),
    Failed(BoxError),
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_reader(&self, st: &mut State) {
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

/// The client's side of a pumped response.
#[derive(Debug)]
pub struct Pumped {
    shared: Arc<Shared>,
    reading: FileRead,
    /// Bytes still to come when the length is known.
    left: Option<u64>,
    done: bool,
}

/// Starts reading `body` ahead of the client (see the module doc); `keep`
/// (the backend's place) is held until the backend has sent it all.
/// `on_file` is called when the response first goes to a file, `on_full`
/// when it could not for the budget.
pub fn pump<B, K>(
    body: B,
    keep: K,
    ahead: Ahead,
    counters: Option<(prometheus::IntCounter, prometheus::IntCounter)>,
) -> Pumped
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
    K: Send + 'static,
{
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        room: Notify::new(),
    });
    let left = body.size_hint().exact();
    tokio::spawn(run_pump(body, keep, ahead, counters, Arc::clone(&shared)));
    Pumped {
        shared,
        reading: FileRead::default(),
        left,
        done: false,
    }
}

async fn run_pump<B, K>(
    mut body: B,
    keep: K,
    ahead: Ahead,
    counters: Option<(prometheus::IntCounter, prometheus::IntCounter)>,
    shared: Arc<Shared>,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError> + Send,
{
    let _keep = keep;
    let mut file: Option<BufferFile> = None;
    // Off for this response after the budget was full or a file failed.
    let mut may_spill = ahead.file > 0 && ahead.files.total > 0;
    // A frame read while batching data for the file, handled next.
    let mut next = None;
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => loop {
                if shared.state().gone {
                    return;
                }
                tokio::select! {
                    f = body.frame() => break f,
                    () = shared.room.notified() => {}
                }
            },
        };
        let mut data = match frame {
            None => {
                end(&shared, End::Done(None), file);
                return;
            }
            Some(Err(e)) => {
                end(&shared, End::Failed(e.into()), file);
                return;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(f) => {
                    end(&shared, End::Done(f.into_trailers().ok()), file);
                    return;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        let mut len = data.len() as u64;
        let mut waited = false;
        loop {
            /// What to do with the chunk in hand.
            enum Step {
                Queued,
                Wait,
                WaitBriefly,
                Spill,
            }
            let notified = shared.room.notified();
            let step = {
                let mut st = shared.state();
                if st.gone {
                    return;
                }
                if st.spilling && st.file_read == st.file_len {
                    // The reader caught up with the file: memory again.
                    st.spilling = false;
                }
                let room_in_file = file.as_ref().map_or(0, |f| f.len) + len <= ahead.file;
                if !st.spilling && (st.mem.is_empty() || st.mem_bytes + len <= ahead.memory) {
                    st.mem_bytes += len;
                    st.mem.push_back(data.clone());
                    shared.wake_reader(&mut st);
                    Step::Queued
                } else if !(may_spill && room_in_file) {
                    // Nowhere to put it: wait for the reader, like a plain stream.
                    Step::Wait
                } else if !st.spilling && !waited {
                    // Memory is full: a reader that keeps up empties it
                    // soon, and then no file is needed.
                    Step::WaitBriefly
                } else {
                    st.spilling = true;
                    Step::Spill
                }
            };
            match step {
                Step::Queued => break,
                Step::Wait => {
                    notified.await;
                    continue;
                }
                Step::WaitBriefly => {
                    waited = true;
                    let _ = tokio::time::timeout(SPILL_AFTER, notified).await;
                    continue;
                }
                Step::Spill => {}
            }
            // One file write for what the backend has sent meanwhile, not
            // one per read (a few KiB).
            let room = ahead.file - file.as_ref().map_or(0, |f| f.len);
            let most = room.min(FILE_CHUNK as u64);
            if len < most {
                let mut batch = BytesMut::from(&data[..]);
                while (batch.len() as u64) < most {
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                            .await;
                    match polled {
                        Poll::Pending => break,
                        Poll::Ready(Some(Ok(f))) if f.is_data() => {
                            let d = f.into_data().unwrap_or_default();
                            if (batch.len() + d.len()) as u64 > room {
                                next = Some(Some(Ok(Frame::data(d))));
                                break;
                            }
                            batch.extend_from_slice(&d);
                        }
                        Poll::Ready(other) => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                data = batch.freeze();
                len = data.len() as u64;
            }
            let spilled = append(&mut file, data.clone(), &ahead.files, counters.as_ref()).await;
            match spilled {
                Ok(f) => {
                    let mut st = shared.state();
                    st.file.get_or_insert(f);
                    st.file_len += len;
                    shared.wake_reader(&mut st);
                    break;
                }
                Err(e) => {
                    // Nothing of this chunk was made readable: it goes to
                    // memory once the reader has read the file (if any).
                    log_spill(&e, "response");
                    if matches!(e, Spill::Full) {
                        if let Some((_, full)) = &counters {
                            full.inc();
                        }
                    }
                    may_spill = false;
                }
            }
        }
    }
}

/// Appends to the response's file, making it first; the file's handle.
async fn append(
    file: &mut Option<BufferFile>,
    data: Bytes,
    files: &Files,
    counters: Option<&(prometheus::IntCounter, prometheus::IntCounter)>,
) -> Result<Arc<File>, Spill> {
    let f = match file {
        Some(f) => f,
        None => {
            if files.budget.used() + data.len() as u64 > files.total {
                return Err(Spill::Full);
            }
            let f = file.insert(BufferFile::create(files).map_err(Spill::Io)?);
            if let Some((to_file, _)) = counters {
                to_file.inc();
            }
            f
        }
    };
    f.append(data).await?;
    Ok(Arc::clone(&f.file))
}

fn end(shared: &Shared, end: End, file: Option<BufferFile>) {
    let mut st = shared.state();
    st.end = Some(end);
    st.owned = file;
    shared.wake_reader(&mut st);
}

impl Body for Pumped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(r) = ready!(this.reading.poll(cx)) {
            return Poll::Ready(Some(match r {
                Ok(b) => {
                    this.shared.state().file_read += b.len() as u64;
                    this.shared.room.notify_one();
                    this.took(b.len());
                    Ok(Frame::data(b))
                }
                Err(e) => {
                    this.done = true;
                    Err(e.into())
                }
            }));
        }
        let mut st = this.shared.state();
        if let Some(b) = st.mem.pop_front() {
            st.mem_bytes -= b.len() as u64;
            drop(st);
            this.shared.room.notify_one();
            this.took(b.len());
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let (true, Some(file)) = (st.file_read < st.file_len, st.file.clone()) {
            let n = (st.file_len - st.file_read).min(FILE_CHUNK as u64) as usize;
            this.reading.start(&file, st.file_read, n);
            drop(st);
            return Pin::new(this).poll_frame(cx);
        }
        match st.end.take() {
            Some(End::Done(trailers)) => {
                this.done = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Some(End::Failed(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Pumped {
    fn took(&mut self, n: usize) {
        if let Some(left) = self.left.as_mut() {
            *left = left.saturating_sub(n as u64);
        }
    }
}

impl Drop for Pumped {
    fn drop(&mut self) {
        self.shared.state().gone = true;
        self.shared.room.notify_one();
    }
}

/// The directory buffer files go to: `buffer_dir`, else the system's.
pub fn dir_of(config: Option<&Path>) -> PathBuf {
    config.map_or_else(std::env::temp_dir, Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::StreamBody;

    use super::*;

    fn files(total: u64) -> Files {
        Files {
            dir: std::env::temp_dir().into(),
            budget: Arc::new(FileBudget::default()),
            total,
        }
    }

    fn ahead(memory: u64, file: u64, files: &Files) -> Ahead {
        Ahead {
            memory,
            file,
            files: files.clone(),
        }
    }

    /// `n` frames of `size` bytes, byte `i` of the whole being `i % 251`.
    fn frames(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|k| {
                Bytes::from(
                    (0..size)
                        .map(|i| ((k * size + i) % 251) as u8)
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    fn body_of(
        frames: Vec<Bytes>,
    ) -> impl Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static {
        StreamBody::new(stream::iter(
            frames
                .into_iter()
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        ))
    }

    async fn read_all<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        out
    }

    /// A reader that has not read yet: the pump takes the whole body into
    /// memory and a file and lets the backend go; the reader then gets
    /// every byte in order, and the file's bytes leave the budget.
    #[tokio::test]
    async fn the_pump_reads_ahead_into_a_file_and_frees_the_backend() {
        let f = files(u64::MAX);
        let data = frames(64, 16 * 1024);
        let (keep, freed) = tokio::sync::oneshot::channel::<()>();
        let mut pumped = pump(
            body_of(data.clone()),
            keep,
            ahead(64 * 1024, 1 << 30, &f),
            None,
        );
        assert_eq!(pumped.size_hint().exact(), None);
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the pump let the backend go before the client read")
            .unwrap_err();
        assert_eq!(
            f.budget.used(),
            (1 << 20) - 64 * 1024,
            "the rest is in the file"
        );
        assert_eq!(read_all(&mut pumped).await, data.concat());
        drop(pumped);
        assert_eq!(f.budget.used(), 0);
    }

    /// With no file allowed (`buffer_response_file = 0` or no budget), the
    /// pump stops at the memory limit until the reader takes some.
    #[tokio::test]
    async fn without_a_file_the_pump_waits_for_the_reader() {
        for (file, total) in [(0, u64::MAX), (1 << 30, 1000)] {
            let f = files(total);
            let data = frames(64, 16 * 1024);
            let (keep, mut freed) = tokio::sync::oneshot::channel::<()>();
            let mut pumped = pump(
                body_of(data.clone()),
                keep,
                ahead(64 * 1024, file, &f),
                None,
            );
            // Give the pump every chance to run ahead.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(SPILL_AFTER * 2).await;
            assert!(freed.try_recv().is_err() && !pumped.is_end_stream());
            assert!(pumped.shared.state().mem_bytes <= 64 * 1024);
            assert_eq!(f.budget.used(), 0);
            assert_eq!(read_all(&mut pumped).await, data.concat());
        }
    }

    /// A client that goes away stops the pump even if the backend sends
    /// nothing more, and the backend is let go.
    #[tokio::test]
    async fn a_reader_that_leaves_stops_the_pump() {
        let f = files(u64::MAX);
        let body = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
        let (keep, freed) = tokio::sync::oneshot::channel::<()>();
        let pumped = pump(body, keep, ahead(1024, 1024, &f), None);
        drop(pumped);
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the pump stopped")
            .unwrap_err();
    }

    /// Trailers and an error from the backend reach the reader, after the data.
    #[tokio::test]
    async fn trailers_and_errors_pass() {
        let f = files(u64::MAX);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let items: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let mut pumped = pump(
            StreamBody::new(stream::iter(items)),
            (),
            ahead(1024, 0, &f),
            None,
        );
        let first = pumped.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        let second = pumped.frame().await.unwrap().unwrap();
        assert_eq!(second.into_trailers().unwrap(), t);
        assert!(pumped.frame().await.is_none());

        let items: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err("backend closed".into()),
        ];
        let mut pumped = pump(
            StreamBody::new(stream::iter(items)),
            (),
            ahead(1024, 0, &f),
            None,
        );
        assert!(pumped.frame().await.unwrap().is_ok());
        assert!(pumped.frame().await.unwrap().is_err());
        assert!(pumped.frame().await.is_none());
    }

    /// A request body read into memory and a file replays whole, as often
    /// as asked; one over the maximum comes back as what was read plus the
    /// rest, which chain to the whole body.
    #[tokio::test]
    async fn request_bodies_spool_and_replay() {
        let f = files(u64::MAX);
        let data = frames(40, 10_000);
        let whole = data.concat();
        let Spooling::Whole(s) = spool_request(body_of(data.clone()), 50_000, 1 << 20, &f)
            .await
            .unwrap()
        else {
            panic!("400,000 bytes fit in 1 MiB");
        };
        assert_eq!(s.len(), 400_000);
        assert!(s.in_file());
        assert_eq!(f.budget.used(), 350_000);
        let s = Arc::new(s);
        for _ in 0..2 {
            let mut r = Replay::new(Arc::clone(&s));
            assert_eq!(r.size_hint().exact(), Some(400_000));
            assert_eq!(read_all(&mut r).await, whole);
        }
        drop(s);
        assert_eq!(f.budget.used(), 0);

        // Uneven pieces: one that does not fit in memory, then small ones
        // that would; they must follow it into the file, in order.
        let uneven: Vec<Bytes> = (0..60)
            .map(|i| {
                let n = if i % 2 == 0 { 6_000 } else { 300 };
                Bytes::from(
                    (0..n)
                        .map(|k| ((i * 31 + k) % 251) as u8)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let Spooling::Whole(s) = spool_request(body_of(uneven.clone()), 10_000, 1 << 20, &f)
            .await
            .unwrap()
        else {
            panic!("fits");
        };
        let mut r = Replay::new(Arc::new(s));
        assert!(
            read_all(&mut r).await == uneven.concat(),
            "pieces out of order"
        );

        let Spooling::Partial(s, rest) = spool_request(body_of(data), 50_000, 200_000, &f)
            .await
            .unwrap()
        else {
            panic!("400,000 bytes are over 200,000");
        };
        assert!(s.len() > 200_000 && s.len() <= 210_000, "{}", s.len());
        let mut chain = Chain::new(s, rest);
        assert_eq!(read_all(&mut chain).await, whole);
    }
}

#[cfg(test)]
mod properties {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::StreamBody;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the pieces, the memory limit and the maximum, what a
        /// spooled body gives back (whole, or what was read plus the rest)
        /// is the body, byte for byte, and its files leave the budget.
        #[test]
        fn a_spooled_body_comes_back_as_it_went_in(
            sizes in proptest::collection::vec(0usize..20_000, 0..40),
            memory in 0u64..40_000,
            extra in 0u64..200_000,
        ) {
            let pieces: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Bytes::from((0..n).map(|k| ((i * 7 + k) % 253) as u8).collect::<Vec<_>>()))
                .collect();
            let whole = pieces.concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let files = Files {
                dir: std::env::temp_dir().into(),
                budget: Arc::new(FileBudget::default()),
                total: u64::MAX,
            };
            let out = rt.block_on(async {
                let body = StreamBody::new(stream::iter(
                    pieces.into_iter().map(|b| Ok::<_, Infallible>(Frame::data(b))),
                ));
                let mut out = Vec::new();
                match spool_request(body, memory, memory + extra, &files).await.unwrap() {
                    Spooling::Whole(s) => {
                        let mut r = Replay::new(Arc::new(s));
                        while let Some(f) = r.frame().await {
                            out.extend_from_slice(&f.unwrap().into_data().unwrap());
                        }
                    }
                    Spooling::Partial(s, rest) => {
                        let mut c = Chain::new(s, rest);
                        while let Some(f) = c.frame().await {
                            out.extend_from_slice(&f.unwrap().into_data().unwrap());
                        }
                    }
                }
                out
            });
            prop_assert!(out == whole, "{} bytes in, {} out", whole.len(), out.len());
            prop_assert_eq!(files.budget.used(), 0);
        }
    }
}
