//! The simulator's streaming answer (`stream=true`): the plan of events, the partial images,
//! and [`SimStream`], which renders each event when its turn comes (no I/O).

use super::*;

/// One event of a streamed answer, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `image_edit.debug`, a type clients do not know (`simulate-stream-unknown`).
    Unknown,
    /// `image_edit.partial_image` number `index` of output image `image`.
    Partial {
        /// Output image, 0-based.
        image: u32,
        /// `partial_image_index`, 0-based.
        index: u32,
    },
    /// `image_edit.completed` for output image `image`.
    Completed {
        /// Output image, 0-based.
        image: u32,
    },
    /// An `error` event (`simulate-stream-error:K`); the stream ends after it.
    Error,
}

/// The stream hooks a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamHook {
    None,
    ErrorAfter(usize),
    TruncateAfter(usize),
    Unknown,
}

impl StreamHook {
    fn from_prompt(prompt: &str) -> StreamHook {
        let count = |rest: &str| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().unwrap_or(0)
        };
        if let Some(rest) = prompt.strip_prefix("simulate-stream-error:") {
            StreamHook::ErrorAfter(count(rest))
        } else if let Some(rest) = prompt.strip_prefix("simulate-stream-truncate:") {
            StreamHook::TruncateAfter(count(rest))
        } else if prompt == "simulate-stream-unknown" {
            StreamHook::Unknown
        } else {
            StreamHook::None
        }
    }
}

/// The events of a stream, in order, for `n` images with `partial_images` partials each, and
/// the step whose first half ends the stream (`simulate-stream-truncate`).
pub(super) fn plan(n: u32, partial_images: u32, hook: StreamHook) -> (Vec<Step>, Option<Step>) {
    let mut steps = Vec::with_capacity((n * (partial_images + 1) + 1) as usize);
    for image in 0..n {
        steps.extend((0..partial_images).map(|index| Step::Partial { image, index }));
        steps.push(Step::Completed { image });
    }
    match hook {
        StreamHook::None => (steps, None),
        StreamHook::Unknown => {
            steps.insert(0, Step::Unknown);
            (steps, None)
        }
        StreamHook::ErrorAfter(k) => {
            steps.truncate(k);
            steps.push(Step::Error);
            (steps, None)
        }
        StreamHook::TruncateAfter(k) => {
            // there is always at least one step (the last completed event) to cut
            let k = k.min(steps.len().saturating_sub(1));
            let cut = steps.get(k).copied();
            steps.truncate(k);
            (steps, cut)
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `event:` line.
    pub name: &'static str,
    /// The `data:` line, a JSON object whose `type` is `name`.
    pub data: Value,
}

impl SseEvent {
    /// `event: NAME\ndata: JSON\n\n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let data = serde_json::to_vec(&self.data).unwrap_or_default();
        crate::codec::sse::encode_event(Some(self.name), &data).to_vec()
    }
}

/// What to write next on a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A whole event.
    Event(SseEvent),
    /// The first half of an event's bytes; write them and end the body (the stream ends
    /// mid-event).
    Truncated(Vec<u8>),
}

/// A streamed answer: produces its events one at a time, rendering each image when its turn
/// comes; no I/O (the listener writes each [`Frame`] after waiting [`SimStream::interval`]).
pub struct SimStream {
    edit: Edit,
    settings: StreamSettings,
    created_at: u64,
    partial_images: u32,
    steps: std::vec::IntoIter<Step>,
    truncate: Option<Step>,
    /// Output image `.0`, edited (each image is needed by all its events).
    current: Option<(u32, Rgba)>,
    done: bool,
}

impl SimStream {
    /// Checks the streaming fields and renders the first image, so that every request error is
    /// an HTTP error rather than an event.
    pub(super) fn new(edit: Edit, settings: &StreamSettings, created_at: u64) -> Result<SimStream, SimResponse> {
        let partial_images = match edit.form.partial_images.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(text) => text.parse().ok().filter(|p| *p <= 3).ok_or_else(|| {
                error(
                    400,
                    "invalid_request_error",
                    "invalid_value",
                    Some("partial_images"),
                    "partial_images must be 0..3",
                )
            })?,
        };
        let (steps, truncate) = plan(edit.form.n, partial_images, StreamHook::from_prompt(&edit.prompt));
        let first = edit.edited(0)?;
        Ok(SimStream {
            edit,
            settings: *settings,
            created_at,
            partial_images,
            steps: steps.into_iter(),
            truncate,
            current: Some((0, first)),
            done: false,
        })
    }

    /// How long to wait before writing each frame.
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// The next frame to write; `None` when the body should end.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        if let Some(step) = self.steps.next() {
            return Some(match self.event(step) {
                Ok(event) => Frame::Event(event),
                Err(resp) => {
                    // cannot happen once the first image rendered; end with an error event
                    self.done = true;
                    let message = serde_json::from_slice::<Value>(&resp.body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    Frame::Event(error_event("image_generation_server_error", "internal_error", &message))
                }
            });
        }
        self.done = true;
        let step = self.truncate.take()?;
        let bytes = self.event(step).ok()?.to_bytes();
        Some(Frame::Truncated(bytes[..bytes.len() / 2].to_vec()))
    }

    /// Renders one step.
    fn event(&mut self, step: Step) -> Result<SseEvent, SimResponse> {
        let (created_at, size, quality, background) = (
            self.created_at,
            self.edit.size(),
            self.edit.quality(),
            self.edit.background(),
        );
        Ok(match step {
            Step::Unknown => SseEvent {
                name: "image_edit.debug",
                data: json!({"type": "image_edit.debug"}),
            },
            Step::Error => error_event(
                "image_generation_server_error",
                "simulated",
                "simulated mid-stream error",
            ),
            Step::Partial { image, index } => {
                let (parts, pad_to) = (self.partial_images, self.settings.partial_image_bytes);
                let edited = load(&mut self.current, &self.edit, image)?;
                let partial = partial_image(&self.edit.image, edited, index, parts);
                SseEvent {
                    name: "image_edit.partial_image",
                    data: json!({
                        "type": "image_edit.partial_image",
                        "b64_json": png_base64(&partial, pad_to)?,
                        "partial_image_index": index,
                        "created_at": created_at,
                        "size": size,
                        "quality": quality,
                        "background": background,
                        "output_format": "png",
                    }),
                }
            }
            Step::Completed { image } => {
                let usage = self.edit.usage().stream_json();
                SseEvent {
                    name: "image_edit.completed",
                    data: json!({
                        "type": "image_edit.completed",
                        "b64_json": png_base64(load(&mut self.current, &self.edit, image)?, 0)?,
                        "created_at": created_at,
                        "size": size,
                        "quality": quality,
                        "background": background,
                        "output_format": "png",
                        "usage": usage,
                    }),
                }
            }
        })
    }
}

/// Output image `index` of `edit`, edited, kept in `current` until the next image is needed.
pub(super) fn load<'a>(current: &'a mut Option<(u32, Rgba)>, edit: &Edit, index: u32) -> Result<&'a Rgba, SimResponse> {
    if current.as_ref().is_none_or(|(i, _)| *i != index) {
        *current = Some((index, edit.edited(index)?));
    }
    current
        .as_ref()
        .map(|(_, img)| img)
        .ok_or_else(|| error(500, "server_error", "internal_error", None, "no image"))
}

pub(super) fn error_event(kind: &str, code: &str, message: &str) -> SseEvent {
    SseEvent {
        name: "error",
        data: json!({
            "type": "error",
            "error": {"type": kind, "code": code, "message": message, "param": null},
        }),
    }
}

/// How many rows (from the top) partial `index` of `parts` takes from the edited image.
pub(super) fn partial_rows(height: u32, index: u32, parts: u32) -> u32 {
    (height as u64 * (index as u64 + 1) / (parts as u64 + 1)) as u32
}

/// Partial `index` of `parts`: `input` with its first [`partial_rows`] rows taken from `edited`
/// (the same size).
pub(super) fn partial_image(input: &Rgba, edited: &Rgba, index: u32, parts: u32) -> Rgba {
    let rows = partial_rows(input.height, index, parts);
    let cut = (rows as usize * input.width as usize * 4).min(edited.pixels.len());
    let mut out = input.clone();
    if let (Some(dst), Some(src)) = (out.pixels.get_mut(..cut), edited.pixels.get(..cut)) {
        dst.copy_from_slice(src);
    }
    out
}
