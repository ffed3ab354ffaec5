//! Server-sent events: the one incremental parser every hop uses (the gateway reading the
//! runtime's stream, the runtime reading the proxy's, the proxy reading its upstreams').
//!
//! The parser is pure: fed byte chunks cut anywhere (inside a line ending or a multi-byte UTF-8
//! character included), it returns the events they complete and never performs I/O. It follows
//! the WHATWG event-stream rules: lines end with CRLF, LF or CR; a leading byte-order mark is
//! skipped; a blank line dispatches the event; `data:` lines are joined with `\n`; `:` lines are
//! comments (keep-alives); `id:`, `retry:` and unknown fields are ignored; an event without data
//! is not dispatched unless [`SseParser::keep_events_without_data`] asks for it.
//!
//! What a misbehaving peer can make it buffer is bounded: a line, or an event's data, longer
//! than the cap stops the parser. It then drops what it held, returns nothing more, and
//! [`SseParser::line_too_long`] reports the cap so the caller can fail the stream in its own
//! words.

/// The cap on one line (and one event's data) unless the caller sets another: far above any
/// real chunk, yet a bound on what one broken peer can make a service hold.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// The UTF-8 byte-order mark a stream may open with.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (Anthropic's event type); `None` for unnamed events.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser; see the module documentation for the rules it follows.
#[derive(Debug)]
pub struct SseParser {
    /// The unfinished line (a CR at its end is held until the next byte shows whether an LF
    /// follows).
    buf: Vec<u8>,
    /// Whether the stream's start was checked for a byte-order mark.
    bom_checked: bool,
    max_line_bytes: usize,
    /// A line or the event's data went past the cap: nothing more is parsed.
    overflowed: bool,
    /// Dispatch events that have an `event:` name but no `data:` line.
    keep_events_without_data: bool,
    event: Option<String>,
    /// The event's data lines, each followed by `\n` (the last one is dropped on dispatch).
    data: String,
    has_data: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_max_line_bytes(DEFAULT_MAX_LINE_BYTES)
    }
}

impl SseParser {
    /// An empty parser with the default cap ([`DEFAULT_MAX_LINE_BYTES`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty parser whose lines, and events' data, may be at most `max_line_bytes` long.
    pub fn with_max_line_bytes(max_line_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            bom_checked: false,
            max_line_bytes,
            overflowed: false,
            keep_events_without_data: false,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// The same parser, also dispatching an event that has an `event:` name but no data (with
    /// empty `data`): the gateway ends its stream on a bare `event: done`.
    #[must_use]
    pub fn keep_events_without_data(mut self) -> Self {
        self.keep_events_without_data = true;
        self
    }

    /// The cap on a line and on an event's data.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// The cap, once a line or an event's data went past it: the events before it were
    /// returned, nothing after it is, and the stream must fail.
    pub fn line_too_long(&self) -> Option<usize> {
        self.overflowed.then_some(self.max_line_bytes)
    }

    /// Consumes a chunk and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.overflowed {
            return out;
        }
        // Only new bytes need a scan (a long record arrives in many chunks): what is held has no
        // line end, except perhaps a last CR waiting for its LF.
        let mut scan_from = self.buf.len() - usize::from(self.buf.last() == Some(&b'\r'));
        self.buf.extend_from_slice(chunk);
        if !self.bom_checked {
            if self.buf.len() < BYTE_ORDER_MARK.len() && BYTE_ORDER_MARK.starts_with(&self.buf) {
                return out;
            }
            if self.buf.starts_with(BYTE_ORDER_MARK) {
                self.buf.drain(..BYTE_ORDER_MARK.len());
            }
            self.bom_checked = true;
            scan_from = 0;
        }
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        while let Some(offset) = buf[scan_from..]
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
        {
            let at = scan_from + offset;
            if at - start > self.max_line_bytes {
                self.overflow();
                return out;
            }
            let next = match (buf[at], buf.get(at + 1)) {
                // A CR at the very end could be the first half of a CRLF split across chunks.
                (b'\r', None) => break,
                (b'\r', Some(b'\n')) => at + 2,
                _ => at + 1,
            };
            // Lines are complete here, so a multi-byte character is never cut.
            self.line(&String::from_utf8_lossy(&buf[start..at]), &mut out);
            if self.overflowed {
                return out;
            }
            start = next;
            scan_from = next;
        }
        if buf.len() - start > self.max_line_bytes {
            self.overflow();
            return out;
        }
        self.buf = buf;
        self.buf.drain(..start);
        out
    }

    /// The body ended: dispatches an event whose terminating blank line never came (servers
    /// that close right after `data: [DONE]`). Nothing after an overflow.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.overflowed {
            return None;
        }
        let mut out = Vec::new();
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !line.is_empty() {
            self.line(&String::from_utf8_lossy(&line), &mut out);
        }
        self.line("", &mut out);
        out.pop()
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.buf = Vec::new();
        self.data = String::new();
        self.has_data = false;
        self.event = None;
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let event = self.event.take();
            if self.has_data || (self.keep_events_without_data && event.is_some()) {
                self.has_data = false;
                let mut data = std::mem::take(&mut self.data);
                // Each data line appended a `\n`; the event-stream rules drop the last one.
                data.pop();
                out.push(SseEvent { event, data });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                // The joined data, not each line, is what the cap bounds: many short `data:`
                // lines must not add up to more than one long one.
                if self.data.len() + value.len() > self.max_line_bytes {
                    self.overflow();
                    return;
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    /// Every way of cutting `input` into three chunks, each parsed to the end.
    fn sse_all_splits(input: &[u8]) -> Vec<Vec<SseEvent>> {
        let mut results = Vec::new();
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut p = SseParser::new();
                let mut out = p.push(&input[..i]);
                out.extend(p.push(&input[i..j]));
                out.extend(p.push(&input[j..]));
                out.extend(p.finish());
                results.push(out);
            }
        }
        results
    }

    /// The data of each event, as the runtime's LLM client reads them.
    fn data_of(events: Vec<SseEvent>) -> Vec<String> {
        events.into_iter().map(|event| event.data).collect()
    }

    #[test]
    fn sse_parses_lf_crlf_cr_comments_multiline_at_every_split() {
        let input = "\u{feff}: OPENROUTER PROCESSING\n\n\
            data: {\"a\":1}\n\n\
            event: message_start\r\ndata: {\"b\":\"é\"}\r\n\r\n\
            id: 7\rretry: 10\rdata:x\rdata:  y\r\r\
            data: {\"json\":1}\r\ndata: \r\n\r\n\
            event: ping\n\n\
            data\n\n\
            data: [DONE]";
        let expected = vec![
            ev(None, "{\"a\":1}"),
            ev(Some("message_start"), "{\"b\":\"é\"}"),
            ev(None, "x\n y"),
            ev(None, "{\"json\":1}\n"),
            ev(None, ""),
            ev(None, "[DONE]"),
        ];
        for (n, got) in sse_all_splits(input.as_bytes()).into_iter().enumerate() {
            assert_eq!(got, expected, "split case {n}");
        }
    }

    #[test]
    fn sse_byte_by_byte() {
        let input = b"event: a\r\ndata: 1\r\n\r\nevent: b\ndata: 2\n\n";
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for b in input {
            out.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(p.finish(), None);
        assert_eq!(out, vec![ev(Some("a"), "1"), ev(Some("b"), "2")]);
    }

    #[test]
    fn sse_events_survive_any_chunking() {
        let body = "data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: caf\u{e9}\ndata: two\n\nid: 3\ndata: [DONE]\n\n";
        let bytes = body.as_bytes();
        for cut in 0..bytes.len() {
            let mut parser = SseParser::default();
            let mut events = data_of(parser.push(&bytes[..cut]));
            events.extend(data_of(parser.push(&bytes[cut..])));
            events.extend(data_of(parser.finish().into_iter().collect()));
            assert_eq!(
                events,
                ["{\"a\":1}", "caf\u{e9}\ntwo", "[DONE]"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_kept_at_the_end() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"data: [DONE]").is_empty());
        assert_eq!(
            parser.finish().map(|event| event.data).as_deref(),
            Some("[DONE]")
        );
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn a_character_split_across_chunks_is_whole() {
        let body = "data: \u{1f980} caf\u{e9}\n\n".as_bytes();
        for cut in 0..body.len() {
            let mut parser = SseParser::new();
            let mut events = parser.push(&body[..cut]);
            events.extend(parser.push(&body[cut..]));
            assert_eq!(events, [ev(None, "\u{1f980} caf\u{e9}")], "cut at {cut}");
        }
    }

    #[test]
    fn named_events_without_data_are_kept_only_when_asked() {
        let body = b"event: done\n\ndata: after\n\n";
        assert_eq!(SseParser::new().push(body), [ev(None, "after")]);
        let mut keeping = SseParser::new().keep_events_without_data();
        assert_eq!(
            keeping.push(body),
            [ev(Some("done"), ""), ev(None, "after")]
        );
        // A blank line alone still dispatches nothing.
        assert!(keeping.push(b"\n\n: comment\n\n").is_empty());
    }

    /// Two MiB: twice the default cap.
    const HUGE: usize = 2 * 1024 * 1024;

    #[test]
    fn a_line_past_the_cap_stops_the_parser_without_buffering_it() {
        let mut parser = SseParser::with_max_line_bytes(1024 * 1024);
        assert_eq!(data_of(parser.push(b"data: {\"a\":1}\n\n")), ["{\"a\":1}"]);
        // A line that never ends, fed 64 KiB at a time: the parser gives up once it passes the
        // cap instead of holding all of it.
        let piece = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        while parser.line_too_long().is_none() {
            assert!(parser.push(&piece).is_empty());
            fed += piece.len();
            assert!(fed <= HUGE, "the parser kept buffering past the cap");
        }
        assert_eq!(parser.line_too_long(), Some(1024 * 1024));
        assert!(fed <= 1024 * 1024 + piece.len());
        assert!(
            parser.buf.is_empty(),
            "the parser still holds the long line"
        );
        assert!(parser.push(b"\n\ndata: late\n\n").is_empty());
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn sse_stops_at_a_line_past_the_cap_without_buffering_it() {
        let piece = vec![b'x'; 64 * 1024];
        // One event, then a line that never ends.
        let mut sse = SseParser::new();
        assert_eq!(sse.push(b"data: first\n\n"), vec![ev(None, "first")]);
        let mut fed = 0;
        while sse.line_too_long().is_none() {
            assert!(sse.push(&piece).is_empty());
            fed += piece.len();
            assert!(fed <= HUGE, "the SSE parser kept buffering past the cap");
        }
        assert_eq!(sse.line_too_long(), Some(DEFAULT_MAX_LINE_BYTES));
        assert!(sse.buf.is_empty(), "the SSE parser still holds the line");
        assert!(sse.push(b"\n\ndata: late\n\n").is_empty());
        assert_eq!(sse.finish(), None);

        // Many short `data:` lines of one SSE event count together.
        let mut sse = SseParser::with_max_line_bytes(1024);
        let line = format!("data: {}\n", "y".repeat(100));
        for _ in 0..20 {
            assert!(sse.push(line.as_bytes()).is_empty());
        }
        assert_eq!(sse.line_too_long(), Some(1024));
    }

    #[test]
    fn many_short_data_lines_cannot_add_up_past_the_cap() {
        const MIN_STREAM_LINE_BYTES: usize = 1024;
        let mut parser = SseParser::with_max_line_bytes(MIN_STREAM_LINE_BYTES);
        let line = format!("data: {}\n", "y".repeat(100));
        for _ in 0..20 {
            assert!(parser.push(line.as_bytes()).is_empty());
        }
        assert_eq!(parser.line_too_long(), Some(MIN_STREAM_LINE_BYTES));
        assert!(parser.push(b"\n").is_empty());
    }

    #[test]
    fn a_line_or_data_of_exactly_the_cap_is_fine() {
        let mut parser = SseParser::with_max_line_bytes(16);
        let line = format!("data: {}", "z".repeat(10));
        assert_eq!(line.len(), 16);
        assert_eq!(
            parser.push(format!("{line}\r\n\r\n").as_bytes()),
            [ev(None, &"z".repeat(10))]
        );
        // Two data lines joined: 7 + 1 + 8 = 16 bytes.
        let events = parser.push(b"data: 1234567\ndata: 12345678\n\n");
        assert_eq!(events, [ev(None, "1234567\n12345678")]);
        assert_eq!(parser.line_too_long(), None);
        assert!(
            parser
                .push(b"data: 12345678\ndata: 12345678\n\n")
                .is_empty()
        );
        assert_eq!(parser.line_too_long(), Some(16));
    }
}
