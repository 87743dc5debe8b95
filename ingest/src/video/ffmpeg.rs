//! The FFmpeg side of video decoding, with every `unsafe` of the video path: an in-memory
//! demuxer with a deadline (custom AVIO reader, seek and interrupt callbacks), stream probing,
//! the decoder, packet reading and read-ahead, and libswscale colour conversion.

use std::collections::{HashSet, VecDeque};
use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::ptr;
use std::time::Instant;

use ffmpeg_next as ff;
use ff::ffi;

use super::plan::{bmff_truncated, needed_pts, orientation_of};
use crate::image::Rgb;
use crate::rejects::{Reject, RejectReason};
use crate::settings::VideoSettings;

/// A packet of the video stream, or the end of what can be read (with the error, if not EOF).
pub(super) enum Next {
    Packet(ff::Packet),
    End(Option<String>),
}

pub(super) fn read_packet_of(input: &mut MemInput<'_>, index: usize) -> Result<Next, Reject> {
    let mut packet = ff::Packet::empty();
    loop {
        match packet.read(&mut input.input) {
            Ok(()) if packet.stream() != index => continue,
            Ok(()) => return Ok(Next::Packet(packet)),
            Err(ff::Error::Exit) => return Err(input.timeout()),
            Err(ff::Error::Eof) => return Ok(Next::End(None)),
            Err(e) => return Ok(Next::End(Some(e.to_string()))),
        }
    }
}

/// Most packets and bytes read ahead for one clip window (beyond, nothing is skipped).
const WINDOW_PACKETS: usize = 4096;
const WINDOW_BYTES: usize = 64 << 20;

/// The packets read ahead for one clip, from the seek point.
pub(super) struct Window {
    pub(super) packets: VecDeque<ff::Packet>,
    /// The end of the stream, when it was hit (with the error, if not EOF).
    pub(super) end: Option<Option<String>>,
    /// The pts some sample takes ([`needed_pts`]); `None` when a packet has no pts (then
    /// nothing is skipped).
    pub(super) needed: Option<HashSet<i64>>,
}

/// Reads the packets up to the first one decoded after the last sample time (every packet
/// shown at or before it comes earlier in decode order, since pts ≥ dts).
pub(super) fn read_window(input: &mut MemInput<'_>, s: &StreamInfo, targets: &[f64]) -> Result<Window, Reject> {
    let last = targets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let time = |p: i64| (p - s.start) as f64 * s.time_base;
    let mut packets = VecDeque::new();
    let mut end = None;
    let mut bytes = 0usize;
    while packets.len() < WINDOW_PACKETS && bytes < WINDOW_BYTES {
        input.check_deadline()?;
        match read_packet_of(input, s.index)? {
            Next::Packet(p) => {
                let past = p.dts().or(p.pts()).is_some_and(|d| time(d) > last);
                bytes += p.size();
                packets.push_back(p);
                if past {
                    break;
                }
            }
            Next::End(e) => {
                end = Some(e);
                break;
            }
        }
    }
    let pts: Option<Vec<i64>> = packets.iter().map(|p| p.pts()).collect();
    let needed = pts.map(|pts| needed_pts(&pts, time, targets));
    Ok(Window { packets, end, needed })
}

/// What the clip decoder needs to know about the chosen stream.
pub(super) struct StreamInfo {
    pub(super) index: usize,
    /// Seconds per time-base unit.
    pub(super) time_base: f64,
    /// Stream start in time-base units (0 when unknown).
    pub(super) start: i64,
    /// Seconds.
    pub(super) duration: f64,
    /// Seconds per frame (guess for frames without timestamps).
    pub(super) frame_period: f64,
    /// Sample aspect ratio (1 when unknown).
    pub(super) sar: f64,
    /// EXIF-style orientation code of the display rotation (1, 3, 6, 8).
    pub(super) orientation: u16,
    /// Displayed width and height.
    pub(super) display: (u32, u32),
}

pub(super) fn probe(input: &MemInput<'_>, settings: &VideoSettings) -> Result<StreamInfo, Reject> {
    let ctx = &*input.input;
    let kinds: Vec<String> = ctx.streams().map(|st| format!("{:?}", st.parameters().medium()).to_lowercase()).collect();
    let stream = ctx
        .streams()
        .find(|st| {
            st.parameters().medium() == ff::media::Type::Video
                && !st.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC)
        })
        .ok_or_else(|| {
            let what = if kinds.is_empty() { "no streams".to_string() } else { format!("streams: {}", kinds.join(", ")) };
            Reject::new(RejectReason::NoVideoStream, what)
        })?;
    // SAFETY: the stream and its parameters belong to the open context.
    let (w, h, sar) = unsafe {
        let par = (*stream.as_ptr()).codecpar;
        let sar = ffi::av_guess_sample_aspect_ratio(input.input.as_ptr() as *mut _, stream.as_ptr() as *mut _, ptr::null_mut());
        let sar = if sar.num > 0 && sar.den > 0 { f64::from(sar.num) / f64::from(sar.den) } else { 1.0 };
        ((*par).width.max(0) as u64, (*par).height.max(0) as u64, sar)
    };
    if w == 0 || h == 0 {
        return Err(Reject::new(RejectReason::Corrupt, format!("video stream of {w}x{h}")));
    }
    if w * h > settings.max_pixels {
        return Err(Reject::new(
            RejectReason::DecompressionBomb,
            format!("{w}x{h} = {} pixels > max_pixels {}", w * h, settings.max_pixels),
        ));
    }
    let orientation = stream
        .side_data()
        .find(|sd| sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36)
        .map_or(1, |sd| {
            // SAFETY: a display matrix is 9 int32 values; av_malloc'd side data is aligned.
            let angle = unsafe { ffi::av_display_rotation_get(sd.data().as_ptr().cast::<i32>()) };
            orientation_of(angle)
        });
    let dw = ((w as f64 * sar).round() as u32).max(1);
    let display = if matches!(orientation, 6 | 8) { (h as u32, dw) } else { (dw, h as u32) };
    let short = display.0.min(display.1);
    if short < settings.min_side {
        return Err(Reject::new(
            RejectReason::TooSmall,
            format!("{}x{} displayed: shortest side {short} < min_side {}", display.0, display.1, settings.min_side),
        ));
    }
    let tb = stream.time_base();
    let time_base = f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
    let start = if stream.start_time() == ffi::AV_NOPTS_VALUE { 0 } else { stream.start_time() };
    let rate = stream.avg_frame_rate();
    let rate = if rate.numerator() > 0 && rate.denominator() > 0 {
        f64::from(rate.numerator()) / f64::from(rate.denominator())
    } else {
        let r = stream.rate();
        if r.numerator() > 0 && r.denominator() > 0 { f64::from(r.numerator()) / f64::from(r.denominator()) } else { 25.0 }
    };
    let duration = if stream.duration() > 0 && stream.duration() != ffi::AV_NOPTS_VALUE && time_base > 0.0 {
        stream.duration() as f64 * time_base
    } else if ctx.duration() > 0 {
        ctx.duration() as f64 / f64::from(ffi::AV_TIME_BASE)
    } else if stream.frames() > 0 {
        stream.frames() as f64 / rate
    } else {
        return Err(Reject::new(RejectReason::Corrupt, "unknown duration (no stream, container or frame-count duration)"));
    };
    Ok(StreamInfo { index: stream.index(), time_base, start, duration, frame_period: 1.0 / rate, sar, orientation, display })
}

pub(super) fn open_decoder(input: &MemInput<'_>, index: usize) -> Result<ff::decoder::Video, Reject> {
    let stream = input.input.stream(index).ok_or_else(|| Reject::new(RejectReason::Internal, "stream vanished"))?;
    let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| Reject::new(RejectReason::Corrupt, format!("codec parameters: {e}")))?;
    // One thread per video: the pipeline runs videos in parallel, and frame threading would
    // only add latency and memory.
    ctx.set_threading(ff::codec::threading::Config { kind: ff::codec::threading::Type::None, count: 1, ..Default::default() });
    let id = stream.parameters().id();
    ctx.decoder().video().map_err(|e| match e {
        ff::Error::DecoderNotFound => Reject::new(RejectReason::UnsupportedFormat, format!("no decoder for {id:?}")),
        e => Reject::new(RejectReason::UnsupportedFormat, format!("cannot open the {id:?} decoder: {e}")),
    })
}

/// Lets the decoder drop the frames of the next packet that no other frame refers to.
pub(super) fn set_skip_nonref(decoder: &mut ff::decoder::Video, skip: bool) {
    // SAFETY: plain field of the open decoder context, read at the next decode call.
    unsafe {
        (*decoder.as_mut_ptr()).skip_frame = if skip { ffi::AVDiscard::AVDISCARD_NONREF } else { ffi::AVDiscard::AVDISCARD_DEFAULT };
    }
}

// ---- FFmpeg plumbing: in-memory input and colour conversion ----

const IO_BUFFER: usize = 1 << 16;
const AVSEEK_SIZE: c_int = 0x10000;
const AVSEEK_FORCE: c_int = 0x20000;
const AVFMT_FLAG_CUSTOM_IO: c_int = 0x0080;

/// Reader state behind the AVIO context's opaque pointer.
struct ReadState {
    data: *const u8,
    len: usize,
    pos: usize,
    deadline: Instant,
    timed_out: bool,
}

impl ReadState {
    fn expired(&mut self) -> bool {
        if Instant::now() > self.deadline {
            self.timed_out = true;
        }
        self.timed_out
    }
}

unsafe extern "C" fn read_packet(opaque: *mut c_void, buf: *mut u8, size: c_int) -> c_int {
    // SAFETY: `opaque` is the boxed ReadState of a live MemInput; `buf` holds `size` bytes.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    if st.expired() {
        return ffi::AVERROR_EXIT;
    }
    let n = (st.len - st.pos).min(size.max(0) as usize);
    if n == 0 {
        return ffi::AVERROR_EOF;
    }
    unsafe { ptr::copy_nonoverlapping(st.data.add(st.pos), buf, n) };
    st.pos += n;
    n as c_int
}

unsafe extern "C" fn seek(opaque: *mut c_void, offset: i64, whence: c_int) -> i64 {
    // SAFETY: as in `read_packet`.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    let base = match whence & !AVSEEK_FORCE {
        AVSEEK_SIZE => return st.len as i64,
        0 => 0,
        1 => st.pos as i64,
        2 => st.len as i64,
        _ => return i64::from(ffi::AVERROR(ff::error::EINVAL)),
    };
    match base.checked_add(offset) {
        Some(p) if (0..=st.len as i64).contains(&p) => {
            st.pos = p as usize;
            p
        }
        _ => i64::from(ffi::AVERROR(ff::error::EINVAL)),
    }
}

unsafe extern "C" fn interrupt(opaque: *mut c_void) -> c_int {
    // SAFETY: as in `read_packet`.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    c_int::from(st.expired())
}

/// A demuxer reading from a byte slice.
pub(super) struct MemInput<'a> {
    input: ManuallyDrop<ff::format::context::Input>,
    avio: *mut ffi::AVIOContext,
    state: Box<ReadState>,
    /// The bytes `state` reads.
    pub(super) data: &'a [u8],
}

impl<'a> MemInput<'a> {
    pub(super) fn open(data: &'a [u8], deadline: Instant) -> Result<Self, Reject> {
        let mut state = Box::new(ReadState { data: data.as_ptr(), len: data.len(), pos: 0, deadline, timed_out: false });
        let opaque = ptr::addr_of_mut!(*state).cast::<c_void>();
        let internal = |what: &str| Reject::new(RejectReason::Internal, format!("{what} failed"));
        // SAFETY: plain FFmpeg allocation calls; every failure path frees what was allocated,
        // and the AVIO context (with its possibly reallocated buffer) outlives the demuxer.
        unsafe {
            let buf = ffi::av_malloc(IO_BUFFER).cast::<u8>();
            if buf.is_null() {
                return Err(internal("av_malloc"));
            }
            let avio = ffi::avio_alloc_context(buf, IO_BUFFER as c_int, 0, opaque, Some(read_packet), None, Some(seek));
            if avio.is_null() {
                ffi::av_free(buf.cast());
                return Err(internal("avio_alloc_context"));
            }
            let mut ctx = ffi::avformat_alloc_context();
            if ctx.is_null() {
                free_avio(avio);
                return Err(internal("avformat_alloc_context"));
            }
            (*ctx).pb = avio;
            (*ctx).flags |= AVFMT_FLAG_CUSTOM_IO;
            (*ctx).interrupt_callback = ffi::AVIOInterruptCB { callback: Some(interrupt), opaque };
            let r = ffi::avformat_open_input(&mut ctx, ptr::null(), ptr::null_mut(), ptr::null_mut());
            if r < 0 {
                // The context was freed by avformat_open_input; the custom AVIO is ours.
                free_avio(avio);
                return Err(open_error(r, &mut state, data));
            }
            let mut input = MemInput { input: ManuallyDrop::new(ff::format::context::Input::wrap(ctx)), avio, state, data };
            let r = ffi::avformat_find_stream_info(ctx, ptr::null_mut());
            if r < 0 {
                return Err(open_error(r, &mut input.state, data));
            }
            Ok(input)
        }
    }

    pub(super) fn check_deadline(&mut self) -> Result<(), Reject> {
        if self.state.expired() {
            return Err(self.timeout());
        }
        Ok(())
    }

    pub(super) fn timeout(&self) -> Reject {
        Reject::new(RejectReason::Timeout, "over the per-video time limit (timeout_secs)")
    }

    /// Seeks to the keyframe at or before `t` seconds (from the stream start) of stream `s`.
    pub(super) fn seek(&mut self, s: &StreamInfo, t: f64) -> Result<(), Reject> {
        let ts = s.start + (t / s.time_base).floor() as i64;
        // SAFETY: the context is open.
        let r = unsafe { ffi::avformat_seek_file(self.input.as_mut_ptr(), s.index as c_int, i64::MIN, ts, ts, 0) };
        if r >= 0 {
            return Ok(());
        }
        if self.state.timed_out {
            return Err(self.timeout());
        }
        // Some demuxers cannot seek by time; back to the first byte, then.
        let r = unsafe { ffi::avformat_seek_file(self.input.as_mut_ptr(), s.index as c_int, i64::MIN, i64::MIN, i64::MAX, ffi::AVSEEK_FLAG_BYTE as c_int) };
        if r < 0 {
            return Err(Reject::new(RejectReason::Corrupt, format!("cannot seek: {}", ff::Error::from(r))));
        }
        Ok(())
    }
}

fn open_error(r: c_int, state: &mut ReadState, data: &[u8]) -> Reject {
    if state.timed_out || r == ffi::AVERROR_EXIT {
        return Reject::new(RejectReason::Timeout, "over the per-video time limit (timeout_secs) while probing");
    }
    let msg = ff::Error::from(r).to_string();
    if bmff_truncated(data) {
        Reject::new(RejectReason::Truncated, format!("MP4/MOV boxes run past the end of the file ({} bytes): {msg}", data.len()))
    } else {
        Reject::new(RejectReason::Corrupt, format!("cannot open as a video container: {msg}"))
    }
}

unsafe fn free_avio(mut avio: *mut ffi::AVIOContext) {
    if !avio.is_null() {
        // SAFETY: the buffer is av_malloc'd (maybe reallocated by FFmpeg) and owned by the context.
        unsafe {
            ffi::av_freep(ptr::addr_of_mut!((*avio).buffer).cast::<c_void>());
            ffi::avio_context_free(&mut avio);
        }
    }
}

impl Drop for MemInput<'_> {
    fn drop(&mut self) {
        // SAFETY: the demuxer goes first (it may still touch `pb`), then the AVIO context.
        unsafe {
            ManuallyDrop::drop(&mut self.input);
            free_avio(self.avio);
        }
    }
}

/// A cached libswscale context converting decoded frames to packed RGB24 at the same size.
pub(super) struct Sws {
    ctx: *mut ffi::SwsContext,
}

// SAFETY: the context is used by one thread at a time (it lives in a per-worker processor).
unsafe impl Send for Sws {}

impl Sws {
    pub(super) fn new() -> Self {
        Sws { ctx: ptr::null_mut() }
    }

    pub(super) fn convert(&mut self, frame: &ff::frame::Video) -> Result<Rgb, Reject> {
        let (w, h) = (frame.width(), frame.height());
        if w == 0 || h == 0 {
            return Err(Reject::new(RejectReason::Corrupt, "decoded frame of zero size"));
        }
        // SAFETY: frame data and line sizes come from the decoder; the output buffer is
        // w*3 × h bytes with a w*3 stride.
        unsafe {
            let f = frame.as_ptr();
            let format = ffi::AVPixelFormat::from(frame.format());
            self.ctx = ffi::sws_getCachedContext(
                self.ctx,
                w as c_int,
                h as c_int,
                format,
                w as c_int,
                h as c_int,
                ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                ffi::SWS_BILINEAR as c_int,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
            );
            if self.ctx.is_null() {
                return Err(Reject::new(RejectReason::UnsupportedFormat, format!("cannot convert pixel format {:?} to RGB", frame.format())));
            }
            let matrix = if (*f).colorspace == ffi::AVColorSpace::AVCOL_SPC_BT709 { ffi::SWS_CS_ITU709 } else { ffi::SWS_CS_DEFAULT };
            let full = c_int::from((*f).color_range == ffi::AVColorRange::AVCOL_RANGE_JPEG);
            let coefs = ffi::sws_getCoefficients(matrix as c_int);
            let rgb_coefs = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT as c_int);
            ffi::sws_setColorspaceDetails(self.ctx, coefs, full, rgb_coefs, 1, 0, 1 << 16, 1 << 16);
            let stride = w as usize * 3;
            let mut pixels = vec![0u8; stride * h as usize];
            let dst = [pixels.as_mut_ptr(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
            let dst_stride = [stride as c_int, 0, 0, 0];
            let rows = ffi::sws_scale(
                self.ctx,
                (*f).data.as_ptr().cast(),
                (*f).linesize.as_ptr(),
                0,
                h as c_int,
                dst.as_ptr(),
                dst_stride.as_ptr(),
            );
            if rows <= 0 {
                return Err(Reject::new(RejectReason::Corrupt, "colour conversion failed"));
            }
            Ok(Rgb { width: w, height: h, pixels })
        }
    }
}

impl Drop for Sws {
    fn drop(&mut self) {
        // SAFETY: allocated by sws_getCachedContext (or null).
        unsafe { ffi::sws_freeContext(self.ctx) }
    }
}
