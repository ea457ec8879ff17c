//! The SSE decoder (`refract::codec::sse`): any input, cut into chunks anywhere, decodes to the
//! same events and the same verdict as the input fed whole; with a large event passed through
//! (`pending_data` → `pass_through_data` → `feed_split`), the events and the passed-through
//! data are those of the whole feed. No input may panic.
//!
//! Input: byte 0 seeds the chunk sizes and the pass-through choices, byte 1 picks the decoder's
//! event size limit; the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refract::codec::sse::{SseDecoder, SseEvent};

/// (event type, data bytes) of each dispatched event, in order.
type Seen = Vec<(Option<String>, Vec<u8>)>;

fn seen(events: &[SseEvent]) -> Seen {
    events.iter().map(|e| (e.event.clone(), e.data.as_bytes().to_vec())).collect()
}

/// A small deterministic generator of chunk sizes and choices.
struct Lcg(u32);
impl Lcg {
    fn next(&mut self, bound: u32) -> u32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (self.0 >> 16) % bound
    }
}

fuzz_target!(|input: &[u8]| {
    let [seed, limit, stream @ ..] = input else { return };
    let max_event = match limit % 4 {
        0 => 16,
        1 => 256,
        _ => 1 << 20,
    };

    // Fed whole.
    let mut whole = SseDecoder::with_max_event_bytes(max_event);
    let mut whole_events = Vec::new();
    let whole_result = whole.feed(stream, &mut whole_events);
    let whole_pending = if whole_result.is_ok() { Some(whole.finish()) } else { None };
    let whole_seen = seen(&whole_events);

    // Fed in chunks: exactly the same events, error and pending count.
    let mut rng = Lcg(u32::from(*seed) + 1);
    let mut chunked = SseDecoder::with_max_event_bytes(max_event);
    let mut chunked_events = Vec::new();
    let mut chunked_result = Ok(());
    let mut rest = stream;
    while !rest.is_empty() {
        let n = (rng.next(64) as usize + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        chunked_result = chunked.feed(chunk, &mut chunked_events);
        if chunked_result.is_err() {
            break;
        }
    }
    assert_eq!(seen(&chunked_events), whole_seen, "chunked events differ");
    assert_eq!(chunked_result, whole_result, "chunked verdict differs");
    if chunked_result.is_ok() {
        assert_eq!(Some(chunked.finish()), whole_pending, "pending bytes differ");
    }

    // Fed in chunks with pass-through of pending data events when the generator says so. The
    // passed-through data is not UTF-8-checked or size-limited by the decoder (its caller
    // checks it), so the verdicts may differ: compare while the whole feed had no error.
    if whole_result.is_err() {
        return;
    }
    let mut rng = Lcg(u32::from(*seed) * 7 + 3);
    let mut split = SseDecoder::with_max_event_bytes(max_event);
    let mut got: Seen = Vec::new();
    let mut passing: Option<(Option<String>, Vec<u8>)> = None;
    let mut rest = stream;
    while !rest.is_empty() {
        if passing.is_none() && rng.next(2) == 0 {
            if let Some((event, _)) = split.pending_data() {
                let event = event.map(str::to_string);
                passing = Some((event, split.pass_through_data()));
            }
        }
        let n = (rng.next(64) as usize + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut out = Vec::new();
        let mut fragment = Vec::new();
        let Ok(ended) = split.feed_split(chunk, &mut out, &mut fragment) else {
            // Only a passed-through event's bytes escape the checks; anything else errs alike.
            return;
        };
        if let Some((_, data)) = passing.as_mut() {
            data.extend_from_slice(&fragment);
        } else {
            assert!(fragment.is_empty(), "fragment bytes without a pass-through");
        }
        if ended {
            let done = passing.take();
            assert!(done.is_some(), "a pass-through end without a pass-through");
            got.extend(done);
        }
        got.extend(seen(&out));
    }
    // An event still being passed through at the end was never dispatched.
    assert_eq!(got, whole_seen, "pass-through events differ");
});
