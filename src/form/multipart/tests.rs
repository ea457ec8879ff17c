//! Unit tests of the multipart push parser: fixed bodies at every split into two and three
//! chunks, the limits, and a differential test against `multer` on random bodies.

use super::*;

const B: &str = "XyZb0undary";

/// A part as the tests compare it: name, filename, content type, content.
type Part = (Option<String>, Option<String>, Option<String>, Vec<u8>);

/// Parses `chunks` to the end; the parts, or the first error.
fn parse_chunks(chunks: &[&[u8]], header_limit: usize) -> Result<Vec<Part>, MultipartError> {
    let owned: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    parse_bytes(owned, header_limit)
}

fn parse_bytes(chunks: Vec<Bytes>, header_limit: usize) -> Result<Vec<Part>, MultipartError> {
    let mut p = MultipartParser::new(B, header_limit);
    let mut parts: Vec<Part> = Vec::new();
    let mut open = false;
    let mut chunks = chunks.into_iter();
    loop {
        match p.next_event()? {
            Some(Event::PartStart(h)) => {
                assert!(!open, "a part started inside a part");
                open = true;
                parts.push((h.name, h.filename, h.content_type, Vec::new()));
            }
            Some(Event::Data(d)) => {
                assert!(open && !d.is_empty(), "data outside a part, or empty");
                parts.last_mut().unwrap().3.extend_from_slice(&d);
            }
            Some(Event::PartEnd) => {
                assert!(open, "an end without a part");
                open = false;
            }
            Some(Event::End) => {
                assert!(!open, "the body ended inside a part");
                assert!(p.is_done());
                assert_eq!(p.next_event(), Ok(None));
                return Ok(parts);
            }
            None => match chunks.next() {
                Some(c) => p.feed(c),
                None => p.finish(),
            },
        }
    }
}

fn part(name: &str, filename: Option<&str>, ct: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut v = format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"").into_bytes();
    if let Some(f) = filename {
        v.extend(format!("; filename=\"{f}\"").into_bytes());
    }
    v.extend(b"\r\n");
    if let Some(ct) = ct {
        v.extend(format!("Content-Type: {ct}\r\n").into_bytes());
    }
    v.extend(b"\r\n");
    v.extend_from_slice(data);
    v.extend(b"\r\n");
    v
}

fn closing() -> Vec<u8> {
    format!("--{B}--\r\n").into_bytes()
}

fn expected(name: &str, filename: Option<&str>, ct: Option<&str>, data: &[u8]) -> Part {
    (
        Some(name.into()),
        filename.map(Into::into),
        ct.map(Into::into),
        data.to_vec(),
    )
}

/// Content that looks like the delimiter's beginnings, a CR at the chunk edges, and so on.
fn tricky() -> Vec<u8> {
    let mut v = b"\r\n--XyZb0undar\r\n-\r\r\n--XyZ".to_vec();
    v.extend(format!("--{B}").as_bytes()); // the boundary without its CRLF is content
    v.extend(b"\r");
    v
}

fn sample() -> (Vec<u8>, Vec<Part>) {
    let mut body = b"preamble\r\n".to_vec();
    body.extend(part("model", None, None, b"openai/gpt-image-1"));
    body.extend(part("image", Some("a.png"), Some("image/png"), &tricky()));
    body.extend(part("empty", None, None, b""));
    body.extend(part("prompt", None, Some("Text/Plain; charset=utf-8"), b"a cat\r\n"));
    body.extend(closing());
    body.extend(b"epilogue --XyZb0undary garbage");
    let parts = vec![
        expected("model", None, None, b"openai/gpt-image-1"),
        expected("image", Some("a.png"), Some("image/png"), &tricky()),
        expected("empty", None, None, b""),
        expected("prompt", None, Some("text/plain"), b"a cat\r\n"),
    ];
    (body, parts)
}

#[test]
fn a_form_parses_whole() {
    let (body, parts) = sample();
    assert_eq!(parse_chunks(&[&body], 1024), Ok(parts));
}

#[test]
fn every_split_into_two_chunks_gives_the_same_parts() {
    let (body, parts) = sample();
    for i in 0..=body.len() {
        let (a, b) = body.split_at(i);
        assert_eq!(parse_chunks(&[a, b], 1024), Ok(parts.clone()), "split at {i}");
    }
}

#[test]
fn every_split_into_three_chunks_gives_the_same_parts() {
    let (body, parts) = sample();
    for i in 0..=body.len() {
        for j in i..=body.len() {
            let r = parse_chunks(&[&body[..i], &body[i..j], &body[j..]], 1024);
            assert_eq!(r, Ok(parts.clone()), "splits at {i} and {j}");
        }
    }
}

#[test]
fn one_byte_chunks_give_the_same_parts() {
    let (body, parts) = sample();
    let chunks: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(parse_chunks(&chunks, 1024), Ok(parts));
}

/// Content is yielded as slices of the input chunks, not copies (a delimiter split across
/// chunks aside), and a chunk's content is yielded before the next chunk is asked for.
#[test]
fn content_is_sliced_from_the_input() {
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = part("image", Some("a.png"), Some("image/png"), &big);
    body.extend(closing());
    let chunks: Vec<Bytes> = body.chunks(8192).map(Bytes::copy_from_slice).collect();
    let mut p = MultipartParser::new(B, 1024);
    let mut got = Vec::new();
    let mut copies = 0;
    let mut next = 0;
    loop {
        match p.next_event().unwrap() {
            Some(Event::Data(d)) => {
                let inside = chunks.iter().any(|c| {
                    let r = c.as_ptr_range();
                    r.start <= d.as_ptr() && d.as_ptr_range().end <= r.end
                });
                if !inside {
                    copies += 1;
                    assert!(d.len() < B.len() + 4, "a copy of {} bytes", d.len());
                }
                got.extend_from_slice(&d);
            }
            Some(Event::End) => break,
            Some(_) => {}
            None => {
                p.feed(chunks[next].clone());
                next += 1;
            }
        }
    }
    assert_eq!(got, big);
    assert_eq!(copies, 0, "no chunk edge falls on a CR here");
}

#[test]
fn a_body_without_its_closing_boundary_is_incomplete() {
    let (body, _) = sample();
    let end = body.len() - b"epilogue --XyZb0undary garbage".len() - closing().len();
    for cut in [0, 5, 15, 40, 100, end, end + 2, end + B.len() + 2, end + B.len() + 3] {
        assert_eq!(
            parse_chunks(&[&body[..cut]], 1024),
            Err(MultipartError::Incomplete),
            "cut at {cut}"
        );
    }
    // No boundary at all.
    assert_eq!(
        parse_chunks(&[b"not multipart\r\n\0\xff"], 1024),
        Err(MultipartError::Incomplete)
    );
    assert_eq!(parse_chunks(&[], 1024), Err(MultipartError::Incomplete));
    // The closing boundary's CRLF is not needed; `--` is.
    let mut b = part("a", None, None, b"x");
    b.extend(format!("--{B}--").as_bytes());
    assert_eq!(parse_chunks(&[&b], 1024), Ok(vec![expected("a", None, None, b"x")]));
    let mut b = part("a", None, None, b"x");
    b.extend(format!("--{B}-").as_bytes());
    assert_eq!(parse_chunks(&[&b], 1024), Err(MultipartError::Incomplete));
}

#[test]
fn boundary_lines_take_padding_and_nothing_else() {
    let padded = format!("--{B} \t \r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{B}--");
    assert_eq!(
        parse_chunks(&[padded.as_bytes()], 1024),
        Ok(vec![expected("a", None, None, b"x")])
    );
    let bad = format!("--{B}x\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{B}--");
    assert_eq!(
        parse_chunks(&[bad.as_bytes()], 1024),
        Err(MultipartError::BadBoundaryLine)
    );
    let bad = format!("--{B}\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{B}--");
    assert_eq!(
        parse_chunks(&[bad.as_bytes()], 1024),
        Err(MultipartError::BadBoundaryLine)
    );
    // An empty form.
    assert_eq!(parse_chunks(&[format!("--{B}--").as_bytes()], 1024), Ok(vec![]));
}

#[test]
fn header_blocks_are_parsed_like_multer() {
    let head = |h: &str| format!("--{B}\r\n{h}\r\n\r\nv\r\n--{B}--").into_bytes();
    let one = |h: &str| parse_chunks(&[&head(h)], 4096).map(|mut p| p.remove(0));
    // Unquoted values, escaped quotes, case-insensitive header names, the last header wins.
    assert_eq!(
        one("content-disposition: form-data; name=abc; filename=x.png"),
        Ok(expected("abc", Some("x.png"), None, b"v"))
    );
    assert_eq!(
        one("Content-Disposition: form-data; name=\"a\\\"b\"; filename=\"c d\""),
        Ok(expected("a\"b", Some("c d"), None, b"v"))
    );
    assert_eq!(
        one("Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b"),
        Ok(expected("b", None, None, b"v"))
    );
    assert_eq!(
        one("Content-Disposition: form-data; filename=\"f\"; name=n\r\nContent-Type: IMAGE/Png ; x=y"),
        Ok(expected("n", Some("f"), Some("image/png"), b"v"))
    );
    assert_eq!(
        one("Content-Disposition: form-data; xname=q\r\nContent-Type: nonsense"),
        Ok((None, None, None, b"v".to_vec()))
    );
    assert!(matches!(one("Bad Header: x"), Err(MultipartError::BadHeaders(_))));
    let many: Vec<String> = (0..33).map(|i| format!("X-{i}: y")).collect();
    assert_eq!(
        one(&many.join("\r\n")),
        Err(MultipartError::BadHeaders("more than 32 headers"))
    );
}

#[test]
fn the_text_between_parts_is_bounded_as_it_arrives() {
    // A header line past the budget: refused at the budget, whatever the chunking.
    let mut body = format!("--{B}\r\nContent-Disposition: form-data; name=a\r\nX-Pad: ").into_bytes();
    body.extend(std::iter::repeat_n(b'a', 4000));
    body.extend(format!("\r\n\r\nv\r\n--{B}--").as_bytes());
    for chunk in [1, 7, 100, 1024, 100_000] {
        let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
        assert_eq!(
            parse_chunks(&chunks, 1024),
            Err(MultipartError::HeaderTooLarge(1024)),
            "chunk {chunk}"
        );
        assert!(parse_chunks(&chunks, 8192).is_ok(), "chunk {chunk}");
    }
    // So is a long preamble, and the text after a part's content.
    let mut body = vec![b'x'; 5000];
    body.extend(part("a", None, None, b"v"));
    body.extend(closing());
    assert_eq!(parse_chunks(&[&body], 1024), Err(MultipartError::HeaderTooLarge(1024)));
    let mut body = part("a", None, None, b"v");
    body.extend(format!("--{B}{}\r\n", " ".repeat(5000)).as_bytes());
    assert_eq!(parse_chunks(&[&body], 1024), Err(MultipartError::HeaderTooLarge(1024)));
    // A header block just within the budget passes at every split.
    let mut body = format!("--{B}\r\nContent-Disposition: form-data; name=a\r\nX-Pad: ").into_bytes();
    body.extend(std::iter::repeat_n(b'a', 1024 - 50));
    body.extend(format!("\r\n\r\nv\r\n--{B}--").as_bytes());
    for i in 0..=body.len() {
        let r = parse_chunks(&[&body[..i], &body[i..]], 1024);
        assert_eq!(r, Ok(vec![expected("a", None, None, b"v")]), "split at {i}");
    }
}

/// `multer`'s reading of the same chunks: the parts, or `Err(())`.
async fn multer_parts(chunks: Vec<Bytes>) -> Result<Vec<Part>, ()> {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut mp = multer::Multipart::new(stream, B);
    let mut parts = Vec::new();
    while let Some(mut f) = mp.next_field().await.map_err(|_| ())? {
        let mut data = Vec::new();
        while let Some(c) = f.chunk().await.map_err(|_| ())? {
            data.extend_from_slice(&c);
        }
        let ct = f.content_type().map(|m| m.essence_str().to_string());
        parts.push((f.name().map(Into::into), f.file_name().map(Into::into), ct, data));
    }
    Ok(parts)
}

/// A random body: parts whose content and headers play with the boundary, padding, preamble
/// and epilogue; then, often, a mutation (a cut, a changed byte, inserted bytes).
fn random_body(rng: &mut fastrand::Rng) -> Vec<u8> {
    let pieces: [&[u8]; 10] = [
        b"\r\n",
        b"\r",
        b"--",
        b"\r\n--",
        b"\r\n--XyZb0und",
        b"\r\n--XyZb0undary",
        b"--XyZb0undary",
        b"abc",
        b" ",
        b"\r\n\r\n",
    ];
    let piece = |rng: &mut fastrand::Rng, n: usize| -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..rng.usize(0..n) {
            if rng.bool() {
                v.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            } else {
                v.push(rng.u8(..));
            }
        }
        v
    };
    let mut body = if rng.u8(..4) == 0 { piece(rng, 4) } else { Vec::new() };
    for _ in 0..rng.usize(0..4) {
        body.extend(format!("--{B}").as_bytes());
        if rng.u8(..5) == 0 {
            body.extend(" \t".repeat(rng.usize(0..3)).as_bytes());
        }
        body.extend(b"\r\n");
        match rng.u8(..6) {
            0 => body.extend(b"content-disposition: form-data; name=plain"),
            1 => body.extend(b"Content-Disposition: form-data; name=\"q\\\"x\"; filename=\"f.png\""),
            2 => body.extend(b"Content-Disposition: form-data"),
            _ => body.extend(format!("Content-Disposition: form-data; name=\"f{}\"", rng.u8(..9)).as_bytes()),
        }
        match rng.u8(..5) {
            0 => body.extend(b"\r\nContent-Type: image/png"),
            1 => body.extend(b"\r\nContent-Type: Text/Plain; charset=utf-8"),
            2 => body.extend(b"\r\nX-Other: y"),
            _ => {}
        }
        body.extend(b"\r\n\r\n");
        body.extend(piece(rng, 12));
        body.extend(b"\r\n");
    }
    body.extend(format!("--{B}--").as_bytes());
    if rng.bool() {
        body.extend(piece(rng, 4));
    }
    match rng.u8(..6) {
        0 if !body.is_empty() => body.truncate(rng.usize(..body.len())),
        1 if !body.is_empty() => {
            let i = rng.usize(..body.len());
            body[i] = pieces[7][rng.usize(..3)];
        }
        2 => {
            let i = rng.usize(..=body.len());
            let p = piece(rng, 3);
            body.splice(i..i, p);
        }
        _ => {}
    }
    body
}

fn random_chunks(rng: &mut fastrand::Rng, body: &[u8]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = (0..rng.usize(0..5)).map(|_| rng.usize(..=body.len())).collect();
    cuts.push(0);
    cuts.push(body.len());
    cuts.sort_unstable();
    cuts.windows(2)
        .map(|w| Bytes::copy_from_slice(&body[w[0]..w[1]]))
        .collect()
}

#[tokio::test]
async fn it_agrees_with_multer_on_random_bodies() {
    let mut rng = fastrand::Rng::with_seed(19);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..20_000 {
        let body = random_body(&mut rng);
        let chunks = random_chunks(&mut rng, &body);
        let ours = parse_bytes(chunks.clone(), 1 << 20).map_err(|_| ());
        let theirs = multer_parts(chunks).await;
        assert_eq!(ours, theirs, "round {round}: {:?}", String::from_utf8_lossy(&body));
        if ours.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The generator exercises both sides.
    assert!(
        accepted > 2000 && refused > 2000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn boundaries_come_from_the_content_type() {
    for (ct, want) in [
        ("multipart/form-data; boundary=abc", Some("abc")),
        ("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b\"", Some("a b")),
        ("multipart/form-data;boundary=x-1", Some("x-1")),
        ("multipart/form-data", None),
        ("multipart/mixed; boundary=abc", None),
        ("multipart/form-data; boundary=", None),
        ("multipart/form-data; boundary", None),
        ("text/plain; boundary=abc", None),
    ] {
        assert_eq!(parse_boundary(ct).as_deref(), want, "{ct}");
        let theirs = multer::parse_boundary(ct).ok().filter(|b| !b.is_empty());
        assert_eq!(parse_boundary(ct), theirs, "{ct} (multer)");
    }
}
