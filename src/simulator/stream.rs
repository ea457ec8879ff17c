//! The simulator's streamed answers: [`SimStream`], frames described up front and each rendered
//! when its turn comes (no I/O), and OpenAI's plan of events (`stream=true`): the partial
//! images, the completed ones, the hooks.

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

/// One frame of a streamed answer, described: rendered when its turn comes.
#[derive(Debug, Clone)]
pub struct PendingFrame {
    /// What goes before the JSON (`event: NAME\ndata: `, or Gemini's `data: `).
    prefix: Vec<u8>,
    /// What goes after it (`\n\n`, or Gemini's `\r\n\r\n`).
    suffix: &'static [u8],
    /// The JSON, its images as [`render::slot`]s.
    doc: Value,
    /// The slots' images.
    pictures: Vec<Picture>,
}

impl PendingFrame {
    /// An OpenAI event: `event: NAME` and `data: JSON`.
    pub(super) fn event(name: &str, doc: Value, pictures: Vec<Picture>) -> Self {
        PendingFrame {
            prefix: format!("event: {name}\ndata: ").into_bytes(),
            suffix: b"\n\n",
            doc,
            pictures,
        }
    }

    /// A Gemini chunk: `data: JSON` and a CRLF blank line.
    pub(super) fn gemini(doc: Value, pictures: Vec<Picture>) -> Self {
        PendingFrame {
            prefix: b"data: ".to_vec(),
            suffix: b"\r\n\r\n",
            doc,
            pictures,
        }
    }

    fn render(&self, place: &RenderPlace) -> Result<Body, Fault> {
        render::framed_json_body((&self.prefix, self.suffix), &self.doc, &self.pictures, place)
    }
}

/// What to write next on a stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A whole frame (one event).
    Event(Body),
    /// An event of which only the first `.1` bytes are written; then the body ends (the
    /// stream ends mid-event).
    Truncated(Body, u64),
}

/// A streamed answer: its frames described up front, each rendered when its turn comes (no
/// I/O: the listener writes each [`Frame`] after waiting [`SimStream::interval`]).
pub struct SimStream {
    frames: std::vec::IntoIter<PendingFrame>,
    /// The frame whose first half ends the stream (`simulate-stream-truncate`).
    truncate: Option<PendingFrame>,
    interval: Duration,
    place: RenderPlace,
    /// The last frame after one failed to render (its message).
    on_fault: fn(&str) -> Vec<u8>,
    done: bool,
}

impl SimStream {
    /// A stream of `frames` (then the first half of `truncate`), one every `interval`; a frame
    /// that fails to render ends the stream with `on_fault`'s frame.
    pub(super) fn new(
        (frames, truncate): (Vec<PendingFrame>, Option<PendingFrame>),
        interval: Duration,
        place: RenderPlace,
        on_fault: fn(&str) -> Vec<u8>,
    ) -> Self {
        SimStream {
            frames: frames.into_iter(),
            truncate,
            interval,
            place,
            on_fault,
            done: false,
        }
    }

    /// OpenAI's stream of `edit` (see the module docs), after checking the streaming fields so
    /// that every request error is an HTTP error rather than an event.
    pub(super) fn openai(edit: Edit, settings: &StreamSettings, created_at: u64) -> Result<SimStream, SimResponse> {
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
        let events = OpenAiEvents {
            edit: &edit,
            settings,
            created_at,
            partial_images,
        };
        let frames = steps.into_iter().map(|s| events.frame(s)).collect();
        let truncate = truncate.map(|s| events.frame(s));
        Ok(SimStream::new(
            (frames, truncate),
            settings.interval,
            edit.place.clone(),
            |message| {
                let doc = error_event_json("image_generation_server_error", "internal_error", message);
                let mut out = b"event: error\ndata: ".to_vec();
                out.extend(serde_json::to_vec(&doc).unwrap_or_default());
                out.extend_from_slice(b"\n\n");
                out
            },
        ))
    }

    /// How long to wait before writing each frame.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Renders the next frame to write (CPU work: run it on the decode pool); `None` when the
    /// body should end.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        if let Some(frame) = self.frames.next() {
            return Some(match frame.render(&self.place) {
                Ok(body) => Frame::Event(body),
                Err(fault) => {
                    // the images' headers were checked before the stream began: corrupt data
                    self.done = true;
                    Frame::Event(Body::from((self.on_fault)(&fault.to_string())))
                }
            });
        }
        self.done = true;
        let body = self.truncate.take()?.render(&self.place).ok()?;
        let half = body.len() / 2;
        Some(Frame::Truncated(body, half))
    }
}

/// OpenAI's events of one stream.
struct OpenAiEvents<'e> {
    edit: &'e Edit,
    settings: &'e StreamSettings,
    created_at: u64,
    partial_images: u32,
}

impl OpenAiEvents<'_> {
    /// The frame of one step.
    fn frame(&self, step: Step) -> PendingFrame {
        let edit = self.edit;
        let (created_at, size, quality, background) = (self.created_at, edit.size(), edit.quality(), edit.background());
        match step {
            Step::Unknown => PendingFrame::event("image_edit.debug", json!({"type": "image_edit.debug"}), Vec::new()),
            Step::Error => PendingFrame::event(
                "error",
                error_event_json(
                    "image_generation_server_error",
                    "simulated",
                    "simulated mid-stream error",
                ),
                Vec::new(),
            ),
            Step::Partial { image, index } => {
                let mut picture = edit.picture(image);
                if let render::Paint::Edit { colour, .. } = picture.paint {
                    picture.paint = render::Paint::Edit {
                        colour,
                        rows: partial_rows(edit.header.height, index, self.partial_images),
                    };
                }
                picture.pad_to = self.settings.partial_image_bytes;
                PendingFrame::event(
                    "image_edit.partial_image",
                    json!({
                        "type": "image_edit.partial_image",
                        "b64_json": render::slot(0),
                        "partial_image_index": index,
                        "created_at": created_at,
                        "size": size,
                        "quality": quality,
                        "background": background,
                        "output_format": "png",
                    }),
                    vec![picture],
                )
            }
            Step::Completed { image } => PendingFrame::event(
                "image_edit.completed",
                json!({
                    "type": "image_edit.completed",
                    "b64_json": render::slot(0),
                    "created_at": created_at,
                    "size": size,
                    "quality": quality,
                    "background": background,
                    "output_format": "png",
                    "usage": edit.usage().stream_json(),
                }),
                vec![edit.picture(image)],
            ),
        }
    }
}

/// The data of an OpenAI `error` event.
pub(super) fn error_event_json(kind: &str, code: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": kind, "code": code, "message": message, "param": null},
    })
}

/// How many rows (from the top) partial `index` of `parts` takes from the edited image.
pub(super) fn partial_rows(height: u32, index: u32, parts: u32) -> u32 {
    (height as u64 * (index as u64 + 1) / (parts as u64 + 1)) as u32
}
