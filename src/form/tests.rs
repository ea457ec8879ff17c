//! Unit tests of the form parser (`parse_edit_form` over chunked bodies) and its builder.

use super::*;

/// A body source over fixed chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

#[async_trait]
impl BodySource for Chunks {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self.0.pop_front())
    }
}

const B: &str = "XyZb0undary";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRfakepng";

fn text(name: &str, v: &str) -> Vec<u8> {
    format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n").into_bytes()
}

fn file(name: &str, fname: &str, ct: &str, data: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "--{B}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{fname}\"\r\nContent-Type: {ct}\r\n\r\n"
    )
    .into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

fn end() -> Vec<u8> {
    format!("--{B}--\r\n").into_bytes()
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_images: 3,
        max_part_bytes: 1 << 16,
        max_field_bytes: 1024,
        ..Limits::default()
    }
}

async fn parse_with(body: Vec<u8>, chunk: usize, limits: &Limits) -> (Result<EditForm, GatewayError>, Spool) {
    let chunks = body.chunks(chunk.max(1)).map(Bytes::copy_from_slice).collect();
    let mut src = Chunks(chunks);
    let mut spool = Spool::new(64, None);
    let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
    let r = parse_edit_form(&mut src, B, limits, &mut spool, &mut ok).await;
    (r, spool)
}

fn body(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = parts.concat();
    v.extend(end());
    v
}

/// A body source whose read fails after its chunks (a broken chunked framing, a stall).
struct FailsAfter(std::collections::VecDeque<Bytes>);

#[async_trait]
impl BodySource for FailsAfter {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        match self.0.pop_front() {
            Some(b) => Ok(Some(b)),
            None => Err(std::io::Error::other("InvalidChunk")),
        }
    }
}

/// A failed read is its own error (the connection must close), whatever part it cut, and
/// keeps the client-visible shape of a malformed body.
#[tokio::test]
async fn a_failed_read_is_an_unreadable_body() {
    let whole = body(&[
        text("model", "openai/gpt-image-1"),
        file("image", "a.png", "image/png", PNG),
    ]);
    for cut in [0, 10, whole.len() - 30, whole.len() - 1] {
        let mut src = FailsAfter([Bytes::copy_from_slice(&whole[..cut])].into_iter().collect());
        let mut spool = Spool::new(64, None);
        let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
        let e = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut ok)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, GatewayError::BodyUnreadable(m) if m == "InvalidChunk"),
            "cut {cut}: {e:?}"
        );
        assert_eq!((e.status(), e.code()), (400, "malformed_multipart"));
    }
}

#[tokio::test]
async fn any_order_any_chunking_gives_the_same_form() {
    let big: Vec<u8> = PNG.iter().copied().chain((0..5000u32).map(|i| i as u8)).collect();
    let a = body(&[
        file("image[]", "a.png", "image/png", &big),
        file("image[]", "b.bin", "application/octet-stream", PNG),
        text("prompt", "make it blue"),
        text("n", "2"),
        text("model", "openai/gpt-image-1"),
    ]);
    for chunk in [1, 7, 100, 4096, a.len()] {
        let (form, spool) = parse_with(a.clone(), chunk, &limits()).await;
        let form = form.unwrap();
        assert_eq!(form.provider, "openai");
        assert_eq!(form.model, "gpt-image-1");
        assert_eq!(form.n, Some(2));
        assert_eq!(form.images.len(), 2);
        assert_eq!(form.images[0].kind, Some(ImageKind::Png));
        assert_eq!(form.images[1].kind, Some(ImageKind::Png));
        assert_eq!(spool.read_all(form.images[0].range).unwrap(), big);
        assert_eq!(spool.read_all(form.images[1].range).unwrap(), PNG);
    }
}

#[tokio::test]
async fn every_field_is_typed() {
    let b = body(&[
        text("model", "openai/gpt-image-1"),
        text("prompt", "p"),
        file("image", "a.png", "image/png", PNG),
        file("mask", "m.png", "image/png", PNG),
        text("type", "inpainting"),
        text("n", "3"),
        text("size", "1024x1536"),
        text("response_format", "b64_json"),
        text("stream", "true"),
        text("background", "transparent"),
        text("input_fidelity", "high"),
        text("partial_images", "2"),
        text("quality", "high"),
        text("output_format", "webp"),
        text("num_inference_steps", "30"),
        text("seed", "-42"),
        text("output_compression", "80"),
        text("negative_prompt", "no cats"),
        text("user", "u1"),
        text("fallbacks", "azure/gpt-image-1"),
        text("fallbacks", r#"[{"provider":"gemini","model":"g"},"vertex/imagen"]"#),
        text("safety_identifier", "s1"),
    ]);
    let f = parse_with(b, 13, &limits()).await.0.unwrap();
    assert_eq!(f.edit_type, Some(EditType::Inpainting));
    assert!(f.mask.is_some());
    assert_eq!(f.size.as_deref(), Some("1024x1536"));
    assert!(f.stream);
    assert_eq!(f.partial_images, Some(2));
    assert_eq!(f.seed, Some(-42));
    assert_eq!(f.output_compression, Some(80));
    assert_eq!(f.num_inference_steps, Some(30));
    assert_eq!(f.fallbacks.len(), 3);
    assert_eq!(
        f.fallbacks[1],
        Fallback {
            provider: "gemini".into(),
            model: "g".into()
        }
    );
    assert_eq!(f.extra_text, vec![("safety_identifier".to_string(), "s1".to_string())]);
}

#[tokio::test]
async fn fallbacks_in_every_sdk_encoding() {
    let b = body(&[
        text("model", "openai/gpt-image-1"),
        text("prompt", "p"),
        text("fallbacks[0]", "a/one"),
        text("fallbacks[][provider]", "b"),
        text("fallbacks[][model]", "two"),
        text("fallbacks[][model]", "three"),
        text("fallbacks[][provider]", "c"),
        text("fallbacks[5][model]", "four"),
        text("fallbacks[5][provider]", "d"),
        file("image", "a.png", "image/png", PNG),
    ]);
    let f = parse_with(b, 13, &limits()).await.0.unwrap();
    let got: Vec<(&str, &str)> = f
        .fallbacks
        .iter()
        .map(|fb| (fb.provider.as_str(), fb.model.as_str()))
        .collect();
    assert_eq!(got, [("a", "one"), ("b", "two"), ("c", "three"), ("d", "four")]);
    let too_many: Vec<Vec<u8>> = [text("model", "openai/m"), text("prompt", "p")]
        .into_iter()
        .chain((0..=super::fields::MAX_FALLBACKS).map(|i| text("fallbacks", &format!("p/m{i}"))))
        .chain([file("image", "a.png", "image/png", PNG)])
        .collect();
    expect_err(&too_many, 400, Some("fallbacks")).await;
    for (name, value) in [
        ("fallbacks[x]", "a/b"),
        ("fallbacks[0][name]", "a"),
        ("fallbacks[][provider]", "a"),
        ("fallbacks[0]", "nope"),
    ] {
        let parts = [
            text("model", "openai/m"),
            text("prompt", "p"),
            text(name, value),
            file("image", "a.png", "image/png", PNG),
        ];
        expect_err(&parts, 400, Some("fallbacks")).await;
    }
    expect_err(
        &[
            text("model", "openai/m"),
            text("prompt", "p"),
            text("fallbacks[1][model]", "m"),
            text("fallbacks[1][model]", "m"),
            file("image", "a.png", "image/png", PNG),
        ],
        400,
        Some("fallbacks"),
    )
    .await;
}

async fn expect_err(parts: &[Vec<u8>], status: u16, param: Option<&str>) {
    let (r, _) = parse_with(body(parts), 50, &limits()).await;
    let e = r.expect_err("should fail");
    assert_eq!(e.status(), status, "{e}");
    assert_eq!(e.param(), param, "{e}");
}

#[tokio::test]
async fn out_of_range_and_wrong_types_name_the_param() {
    let base = || {
        vec![
            text("model", "openai/m"),
            text("prompt", "p"),
            file("image", "a.png", "image/png", PNG),
        ]
    };
    for (name, value) in [
        ("n", "0"),
        ("n", "11"),
        ("n", "two"),
        ("partial_images", "4"),
        ("output_compression", "101"),
        ("output_compression", "-1"),
        ("size", "1000x1000"),
        ("size", "big"),
        ("quality", "ultra"),
        ("response_format", "png"),
        ("background", "none"),
        ("input_fidelity", "medium"),
        ("output_format", "gif"),
        ("type", "recolor"),
        ("stream", "yes"),
        ("seed", "1.5"),
        ("num_inference_steps", "0"),
        ("fallbacks", "nope"),
        ("fallbacks", "[1,2]"),
    ] {
        let mut parts = base();
        parts.push(text(name, value));
        expect_err(&parts, 400, Some(name)).await;
    }
}

#[tokio::test]
async fn required_fields() {
    expect_err(
        &[text("prompt", "p"), file("image", "a.png", "image/png", PNG)],
        400,
        Some("model"),
    )
    .await;
    expect_err(&[text("model", "openai/m"), text("prompt", "p")], 400, Some("image")).await;
    expect_err(
        &[text("model", "openai/m"), file("image", "a.png", "image/png", PNG)],
        400,
        Some("prompt"),
    )
    .await;
    expect_err(
        &[
            text("model", "nomodel"),
            text("prompt", "p"),
            file("image", "a.png", "image/png", PNG),
        ],
        400,
        Some("model"),
    )
    .await;
    // background removal needs no prompt
    let (r, _) = parse_with(
        body(&[
            text("model", "openai/m"),
            text("type", "background_removal"),
            file("image", "a.png", "image/png", PNG),
        ]),
        9,
        &limits(),
    )
    .await;
    assert!(r.is_ok());
}

#[tokio::test]
async fn non_images_and_duplicates_are_rejected() {
    let m = || text("model", "openai/m");
    expect_err(
        &[
            m(),
            text("prompt", "p"),
            file("image", "a.gif", "image/png", b"GIF89a......"),
        ],
        400,
        Some("image"),
    )
    .await;
    expect_err(
        &[m(), text("prompt", "p"), file("image", "a.png", "image/png", b"")],
        400,
        Some("image"),
    )
    .await;
    expect_err(
        &[m(), text("prompt", "p"), file("image", "a.png", "image/png", b"\x89P")],
        400,
        Some("image"),
    )
    .await;
    expect_err(
        &[
            m(),
            text("prompt", "p"),
            file("image", "a.png", "image/png", PNG),
            file("mask", "m", "text/plain", b"hello world!"),
        ],
        400,
        Some("mask"),
    )
    .await;
    expect_err(
        &[m(), m(), text("prompt", "p"), file("image", "a.png", "image/png", PNG)],
        400,
        Some("model"),
    )
    .await;
    expect_err(
        &[m(), text("prompt", "p"), text("image", "not a file")],
        400,
        Some("image"),
    )
    .await;
    let four: Vec<Vec<u8>> = (0..4).map(|_| file("image[]", "a.png", "image/png", PNG)).collect();
    let mut parts = vec![m(), text("prompt", "p")];
    parts.extend(four);
    expect_err(&parts, 400, Some("image")).await;
}

#[tokio::test]
async fn limits_give_413() {
    let m = || text("model", "openai/m");
    let big = vec![0x89u8; (1 << 16) + 1];
    let mut img = PNG.to_vec();
    img.extend_from_slice(&big);
    expect_err(
        &[m(), text("prompt", "p"), file("image", "a.png", "image/png", &img)],
        413,
        Some("image"),
    )
    .await;
    expect_err(
        &[
            m(),
            text("prompt", &"x".repeat(1025)),
            file("image", "a.png", "image/png", PNG),
        ],
        413,
        Some("prompt"),
    )
    .await;
    let small = Limits {
        max_body_bytes: 100,
        ..limits()
    };
    let (r, _) = parse_with(body(&[m(), text("prompt", &"x".repeat(200))]), 10, &small).await;
    let e = r.unwrap_err();
    assert_eq!((e.status(), e.param()), (413, None));
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let m = text("model", "openai/m");
    // truncated: no closing boundary
    let (r, _) = parse_with(m.clone(), 5, &limits()).await;
    assert_eq!(r.unwrap_err().status(), 400);
    // garbage
    let (r, _) = parse_with(b"this is not multipart at all".to_vec(), 5, &limits()).await;
    assert_eq!(r.unwrap_err().status(), 400);
    // part without a name
    let mut b = format!("--{B}\r\nContent-Disposition: form-data\r\n\r\nv\r\n").into_bytes();
    b.extend(end());
    let (r, _) = parse_with(b, 5, &limits()).await;
    assert_eq!(r.unwrap_err().status(), 400);
    // empty body
    let (r, _) = parse_with(Vec::new(), 5, &limits()).await;
    assert_eq!(r.unwrap_err().status(), 400);
}

#[tokio::test]
async fn model_hook_runs_before_the_rest_is_read() {
    let b = body(&[text("model", "nope/m"), file("image", "a.png", "image/png", PNG)]);
    let chunks = b.chunks(8).map(Bytes::copy_from_slice).collect();
    let mut src = Chunks(chunks);
    let mut spool = Spool::new(64, None);
    let mut refuse = ModelCheck(|p: &str, _: &str| Err(GatewayError::UnknownProvider(p.to_string())));
    let r = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut refuse).await;
    assert!(matches!(r, Err(GatewayError::UnknownProvider(_))));
    assert!(!src.0.is_empty(), "the image must not have been read");
    assert!(spool.is_empty());
}

/// A sink that records what it was handed.
#[derive(Default)]
struct Recorder {
    texts: Vec<String>,
    files: Vec<String>,
}

#[async_trait]
impl FormSink for Recorder {
    async fn model(&mut self, _: &str, _: &str) -> Result<(), GatewayError> {
        Ok(())
    }
    async fn text(&mut self, name: &str, _: &str) -> Result<(), GatewayError> {
        self.texts.push(name.to_string());
        Ok(())
    }
    async fn file_begin(
        &mut self,
        field: &str,
        _: Option<&str>,
        _: Option<ImageKind>,
        _: Option<&str>,
    ) -> Result<(), GatewayError> {
        self.files.push(field.to_string());
        Ok(())
    }
}

async fn parse_recorded(body: Vec<u8>, chunk: usize) -> (Result<EditForm, GatewayError>, Recorder) {
    let mut src = Chunks(body.chunks(chunk).map(Bytes::copy_from_slice).collect());
    let mut spool = Spool::new(64, None);
    let mut rec = Recorder::default();
    let r = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut rec).await;
    (r, rec)
}

#[tokio::test]
async fn empty_optional_fields_are_absent_and_not_handed_on() {
    let mut parts = vec![text("model", "openai/m"), text("prompt", "p")];
    for name in [
        "type",
        "n",
        "size",
        "response_format",
        "stream",
        "background",
        "input_fidelity",
        "partial_images",
        "quality",
        "output_format",
        "num_inference_steps",
        "seed",
        "output_compression",
        "negative_prompt",
        "user",
        "fallbacks",
        "fallbacks[0]",
        "fallbacks[][model]",
        "safety_identifier",
    ] {
        parts.push(text(name, ""));
        parts.push(text(name, "  "));
    }
    parts.push(file("mask", "", "application/octet-stream", b""));
    parts.push(file("extra", "", "application/octet-stream", b""));
    parts.push(file("image", "a.png", "image/png", PNG));
    for chunk in [7, 4096] {
        let (form, rec) = parse_recorded(body(&parts), chunk).await;
        let form = form.unwrap();
        assert_eq!(
            form,
            EditForm {
                provider: "openai".into(),
                model: "m".into(),
                prompt: Some("p".into()),
                images: form.images.clone(),
                ..EditForm::default()
            }
        );
        assert_eq!(rec.texts, ["prompt"]);
        assert_eq!(rec.files, ["image"]);
    }
    // An empty model is still refused at once, an empty prompt when the edit needs one.
    expect_err(
        &[text("model", ""), file("image", "a.png", "image/png", PNG)],
        400,
        Some("model"),
    )
    .await;
    expect_err(
        &[
            text("model", "openai/m"),
            text("prompt", " "),
            file("image", "a.png", "image/png", PNG),
        ],
        400,
        Some("prompt"),
    )
    .await;
    // No image left once an empty one is absent.
    expect_err(
        &[
            text("model", "openai/m"),
            text("prompt", "p"),
            file("image", "a.png", "image/png", b""),
        ],
        400,
        Some("image"),
    )
    .await;
}

#[tokio::test]
async fn fallbacks_past_the_limit_are_refused_when_they_arrive() {
    // The 11th one-candidate field is refused; what follows it is never read.
    let mut parts = vec![text("model", "openai/m"), text("prompt", "p")];
    for i in 0..50 {
        parts.push(text("fallbacks", &format!("p/m{i}")));
    }
    parts.push(file("image", "a.png", "image/png", PNG));
    let b = body(&parts);
    let eleventh_end = parts[..13].concat().len();
    let mut src = Chunks(b.chunks(16).map(Bytes::copy_from_slice).collect());
    let mut spool = Spool::new(64, None);
    let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
    let e = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut ok)
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.param()), (400, Some("fallbacks")), "{e}");
    let unread: usize = src.0.iter().map(Bytes::len).sum();
    assert!(
        b.len() - unread <= eleventh_end + 64,
        "read {} of {}",
        b.len() - unread,
        b.len()
    );
    // Every encoding counts towards the same ten.
    let mixed = [
        text("model", "openai/m"),
        text("prompt", "p"),
        text("fallbacks", &serde_json::to_string(&vec!["p/m"; 8]).unwrap()),
        text("fallbacks[0][provider]", "p"),
        text("fallbacks[1][model]", "m"),
        text("fallbacks[2]", "p/m"),
        file("image", "a.png", "image/png", PNG),
    ];
    expect_err(&mixed, 400, Some("fallbacks")).await;
    let ten = [
        text("model", "openai/m"),
        text("prompt", "p"),
        text("fallbacks", &serde_json::to_string(&vec!["p/m"; 8]).unwrap()),
        text("fallbacks[0][provider]", "p"),
        text("fallbacks[0][model]", "m"),
        text("fallbacks[]", r#"{"provider":"q","model":"n"}"#),
        file("image", "a.png", "image/png", PNG),
    ];
    assert_eq!(
        parse_with(body(&ten), 13, &limits()).await.0.unwrap().fallbacks.len(),
        10
    );
}

#[test]
fn a_json_array_of_fallbacks_stops_at_its_room() {
    let many = serde_json::to_string(&vec!["p/m"; 5000]).unwrap();
    for room in [0, 3, 10] {
        let e = fields::parse_fallbacks_for_test(&many, room).unwrap_err();
        assert!(e.to_string().contains("too many fallbacks"), "{e}");
    }
    let e = fields::parse_fallbacks_for_test(r#"{"provider":"p","model":"m"}"#, 0).unwrap_err();
    assert!(e.to_string().contains("too many fallbacks"), "{e}");
    let three = fields::parse_fallbacks_for_test(r#"["a/b", {"provider":"c","model":"d","x":1}, "e/f"]"#, 3).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(
        three[1],
        Fallback {
            provider: "c".into(),
            model: "d".into()
        }
    );
    for bad in [
        r#"["a/b", 1]"#,
        r#"[{"provider":"","model":"m"}]"#,
        r#"["a/b"] x"#,
        "[",
        r#"{"provider":"p"}"#,
    ] {
        let e = fields::parse_fallbacks_for_test(bad, 10).unwrap_err();
        assert!(e.to_string().starts_with("invalid fallback"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn field_names_are_bounded_and_odd_ones_not_handed_on() {
    let long = "n".repeat(MAX_FIELD_NAME_BYTES + 1);
    let wide = Limits {
        max_part_header_bytes: 4096,
        ..limits()
    };
    let parts = [
        text("model", "openai/m"),
        text("prompt", "p"),
        text(&long, "v"),
        file("image", "a.png", "image/png", PNG),
    ];
    let e = parse_with(body(&parts), 100, &wide).await.0.unwrap_err();
    assert_eq!((e.status(), e.param()), (400, None), "{e}");
    assert!(!e.to_string().contains(&long), "{e}");
    let parts = [
        text("model", "openai/m"),
        text("prompt", "p"),
        file(&long, "f.bin", "text/plain", b"data"),
        file("image", "a.png", "image/png", PNG),
    ];
    let e = parse_with(body(&parts), 100, &wide).await.0.unwrap_err();
    assert_eq!((e.status(), e.param()), (400, None), "{e}");
    let parts = [
        text("model", "openai/m"),
        text("prompt", "p"),
        text("na me", "odd"),
        text("n\u{e4}me", "odd"),
        text("meta[key]", "plain"),
        file("odd file", "f.bin", "text/plain", b"data"),
        file("extra_file", "f.bin", "text/plain", b"data"),
        file("image", "a.png", "image/png", PNG),
    ];
    let (form, rec) = parse_recorded(body(&parts), 11).await;
    let form = form.unwrap();
    assert_eq!(form.extra_text, vec![("meta[key]".to_string(), "plain".to_string())]);
    assert_eq!(form.extra_files.len(), 1);
    assert_eq!(form.extra_files[0].field, "extra_file");
    assert_eq!(rec.texts, ["prompt", "meta[key]"]);
    assert_eq!(rec.files, ["extra_file", "image"]);
    for (name, plain) in [
        ("a", true),
        ("fallbacks[0][model]", true),
        ("a b", false),
        ("a\"b", false),
        ("", false),
    ] {
        assert_eq!(is_plain_name(name), plain, "{name}");
    }
}

#[tokio::test]
async fn a_part_header_past_its_limit_is_refused_as_it_arrives() {
    let limits = Limits {
        max_body_bytes: 64 << 20,
        max_part_header_bytes: 1024,
        ..limits()
    };
    // 8 MB of one header line, in 16 KiB chunks: refused after about the limit.
    let mut b = text("model", "openai/m");
    b.extend(format!("--{B}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-Pad: ").into_bytes());
    b.extend(std::iter::repeat_n(b'a', 8 << 20));
    b.extend(b"\r\n\r\np\r\n");
    b.extend(file("image", "a.png", "image/png", PNG));
    b.extend(end());
    let total = b.len();
    let mut src = Chunks(b.chunks(16 << 10).map(Bytes::copy_from_slice).collect());
    let mut spool = Spool::new(64, None);
    let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
    let e = parse_edit_form(&mut src, B, &limits, &mut spool, &mut ok)
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "malformed_multipart"), "{e}");
    assert!(e.to_string().contains("max_part_header_bytes (1024 bytes)"), "{e}");
    let read = total - src.0.iter().map(Bytes::len).sum::<usize>();
    assert!(read <= 3 * (16 << 10), "read {read} bytes");
    // A preamble is bounded the same way.
    let mut b = vec![b'x'; 1 << 20];
    b.extend(body(&[text("model", "openai/m")]));
    let (r, _) = parse_with(b, 4096, &limits).await;
    assert_eq!(r.unwrap_err().code(), "malformed_multipart");
    // Headers within the limit pass at any chunking; a chunk larger than the budget is
    // split (its rest is fed once the part is found).
    let long_header = format!(
        "--{B}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-Pad: {}\r\n\r\np\r\n",
        "a".repeat(900)
    );
    let parts = [
        text("model", "openai/m"),
        long_header.into_bytes(),
        file("image", "a.png", "image/png", PNG),
    ];
    for chunk in [1, 13, 1000, 1 << 20] {
        let (r, _) = parse_with(body(&parts), chunk, &limits).await;
        assert_eq!(r.unwrap().prompt.as_deref(), Some("p"), "chunk {chunk}");
    }
}

#[test]
fn image_field_names() {
    for ok in ["image", "image[]", "image[0]", "image[12]"] {
        assert!(is_image_field(ok), "{ok}");
    }
    for no in ["images", "image[a]", "image[", "mask", "img"] {
        assert!(!is_image_field(no), "{no}");
    }
}

/// A sink whose path fixed the model (Azure's deployment route), recording the `model` calls.
struct Preset(Vec<(String, String)>);

#[async_trait]
impl FormSink for Preset {
    async fn model(&mut self, provider: &str, model: &str) -> Result<(), GatewayError> {
        self.0.push((provider.to_string(), model.to_string()));
        Ok(())
    }
    fn preset_model(&self) -> Option<(&str, &str)> {
        Some(("demo", "sim-image-1"))
    }
}

/// A model the path names is the form's, routed before the first part; the form's own
/// `model` (here a bare deployment name, invalid on its own) is ignored, or may be absent.
#[tokio::test]
async fn a_preset_model_overrides_and_replaces_the_field() {
    for parts in [
        vec![
            text("model", "my-deployment"),
            text("prompt", "p"),
            file("image", "a.png", "image/png", PNG),
        ],
        vec![text("prompt", "p"), file("image", "a.png", "image/png", PNG)],
    ] {
        let chunks = body(&parts).chunks(7).map(Bytes::copy_from_slice).collect();
        let mut spool = Spool::new(64, None);
        let mut sink = Preset(Vec::new());
        let form = parse_edit_form(&mut Chunks(chunks), B, &limits(), &mut spool, &mut sink)
            .await
            .unwrap();
        assert_eq!((form.provider.as_str(), form.model.as_str()), ("demo", "sim-image-1"));
        assert_eq!(sink.0, vec![("demo".to_string(), "sim-image-1".to_string())]);
        assert!(form.extra_text.iter().all(|(name, _)| name != "model"));
    }
}

/// Records where each file chunk handed to the sink lives in memory.
struct Addresses(Vec<(usize, usize)>);

#[async_trait]
impl FormSink for Addresses {
    async fn model(&mut self, _: &str, _: &str) -> Result<(), GatewayError> {
        Ok(())
    }
    async fn file_data(&mut self, chunk: Bytes) -> Result<(), GatewayError> {
        let r = chunk.as_ptr_range();
        self.0.push((r.start as usize, r.end as usize));
        Ok(())
    }
}

/// File content reaches the sink (and the spool) as slices of the body's own chunks: no
/// intermediate buffer, no copy.
#[tokio::test]
async fn file_content_is_handed_on_as_the_bodys_own_bytes() {
    let big: Vec<u8> = PNG
        .iter()
        .copied()
        .chain((0..40_000u32).map(|i| (i % 7) as u8))
        .collect();
    let whole = body(&[
        text("model", "openai/m"),
        text("prompt", "p"),
        file("image", "a.png", "image/png", &big),
    ]);
    let chunks: Vec<Bytes> = whole.chunks(4096).map(Bytes::copy_from_slice).collect();
    let mut spool = Spool::new(1 << 20, None);
    let mut sink = Addresses(Vec::new());
    let form = parse_edit_form(
        &mut Chunks(chunks.iter().cloned().collect()),
        B,
        &limits(),
        &mut spool,
        &mut sink,
    )
    .await
    .unwrap();
    assert_eq!(form.images.len(), 1);
    assert_eq!(sink.0.iter().map(|(s, e)| e - s).sum::<usize>(), big.len());
    for (start, end) in &sink.0 {
        let inside = chunks.iter().any(|c| {
            let r = c.as_ptr_range();
            r.start as usize <= *start && *end <= r.end as usize
        });
        assert!(inside, "a chunk of {} bytes was copied", end - start);
    }
}
