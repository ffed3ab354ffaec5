//! A typed, borrowing reading of the common OpenAI chunk and completion shapes: text,
//! reasoning, a finish reason and usage, with one choice. It is what almost every chunk of an
//! OpenAI-compatible stream looks like, and reading it straight into these structs (unknown
//! fields skipped, strings borrowed from the input unless they hold escapes) costs a fraction
//! of building a `serde_json::Value` tree.
//!
//! It is only a shortcut: whenever the input is not exactly this shape (an `error` object,
//! tool calls, a field of an unexpected type, a repeated key, ...), [`FastChunk::parse`]
//! answers `None` and the caller reads the input the general way, so the events are the same
//! either way.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};

/// A JSON string, borrowed from the input when it has no escapes.
#[derive(Debug, PartialEq, Eq)]
pub struct JsonStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a str>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = JsonStr<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

impl JsonStr<'_> {
    /// The text when it is not empty, owned.
    pub fn non_empty(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.clone().into_owned())
    }
}

/// One chunk of a stream (`choices[].delta`) or a whole completion (`choices[].message`).
#[derive(Debug, Deserialize)]
pub struct FastChunk<'a> {
    #[serde(borrow)]
    pub id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pub model: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pub choices: Option<Vec<FastChoice<'a>>>,
    pub usage: Option<FastUsage>,
    /// Any non-null `error` sends the input the general way.
    error: Option<IgnoredAny>,
}

/// One entry of `choices`.
#[derive(Debug, Deserialize)]
pub struct FastChoice<'a> {
    pub index: Option<u64>,
    /// The change a stream chunk carries.
    #[serde(borrow)]
    delta: Option<FastDelta<'a>>,
    /// The whole message of a completion.
    #[serde(borrow)]
    message: Option<FastDelta<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<JsonStr<'a>>,
}

/// The text parts of a delta or message; `tool_calls` sends the input the general way.
#[derive(Debug, Deserialize)]
pub struct FastDelta<'a> {
    #[serde(borrow)]
    pub content: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pub reasoning_content: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pub reasoning: Option<JsonStr<'a>>,
    tool_calls: Option<IgnoredAny>,
}

/// `usage`, with `prompt_tokens_details.cached_tokens`.
#[derive(Debug, Deserialize)]
pub struct FastUsage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub prompt_tokens_details: Option<FastTokenDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Deserialize)]
pub struct FastTokenDetails {
    pub cached_tokens: Option<u64>,
}

/// Which member of a choice carries the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A stream chunk: `delta`.
    Chunk,
    /// A whole completion: `message`.
    Completion,
}

impl<'a> FastChunk<'a> {
    /// `json` read as the simple shape, or `None` when it is anything else.
    pub fn parse(json: &'a str, shape: Shape) -> Option<Self> {
        let chunk: FastChunk<'a> = serde_json::from_str(json).ok()?;
        if chunk.error.is_some() {
            return None;
        }
        for choice in chunk.choices.iter().flatten() {
            let simple = match shape {
                // A completion's `message` becomes the delta; a stray `delta` next to it is
                // a shape this shortcut does not decide on.
                Shape::Chunk => choice.message.is_none(),
                Shape::Completion => choice.delta.is_none(),
            };
            let text = choice.text();
            let tools = text.is_some_and(|d| d.tool_calls.is_some());
            if !simple || tools {
                return None;
            }
        }
        Some(chunk)
    }

    /// The first choice with `index` 0 (a missing `index` counts as 0), as the general reading
    /// picks it.
    pub fn choice_zero(&self) -> Option<&FastChoice<'a>> {
        self.choices
            .as_deref()?
            .iter()
            .find(|choice| choice.index.unwrap_or(0) == 0)
    }

    /// Whether `choices` is a non-empty array.
    pub fn has_choices(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }
}

impl<'a> FastChoice<'a> {
    /// The delta (stream) or message (completion); only one of them is ever set here.
    pub fn text(&self) -> Option<&FastDelta<'a>> {
        self.delta.as_ref().or(self.message.as_ref())
    }
}

impl FastDelta<'_> {
    /// The reasoning text: `reasoning_content`, else `reasoning`, when not empty.
    pub fn reasoning_text(&self) -> Option<String> {
        [&self.reasoning_content, &self.reasoning]
            .into_iter()
            .find_map(|field| field.as_ref().and_then(JsonStr::non_empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_decoded() {
        let json = r#"{"choices":[{"index":0,"delta":{"content":"a \"b\"\nc é 🦀"}}],"model":"m"}"#;
        let chunk = FastChunk::parse(json, Shape::Chunk).unwrap();
        assert!(matches!(chunk.model, Some(JsonStr(Cow::Borrowed("m")))));
        let delta = chunk.choice_zero().unwrap().text().unwrap();
        assert_eq!(
            delta.content.as_ref().unwrap().0,
            "a \"b\"\nc é 🦀".to_owned()
        );
    }

    #[test]
    fn other_shapes_are_left_to_the_general_reading() {
        for json in [
            r#"{"error":{"message":"x"},"choices":[]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
            r#"{"choices":[{"delta":{"content":1}}]}"#,
            r#"{"choices":[{"index":-1,"delta":{}}]}"#,
            r#"{"choices":{}}"#,
            r#"{"model":"a","model":"b","choices":[]}"#,
            r#"{"choices":[{"message":{"content":"x"}}]}"#,
            r#"{"usage":{"prompt_tokens":1.5}}"#,
            r#"{"usage":"none"}"#,
            r#"[1]"#,
            r#"{"choices":[{"delta":{"content":"x"}}]} trailing"#,
        ] {
            assert!(FastChunk::parse(json, Shape::Chunk).is_none(), "{json}");
        }
        assert!(
            FastChunk::parse(r#"{"choices":[{"delta":{}}]}"#, Shape::Completion).is_none(),
            "a delta in a completion"
        );
        // Nulls are absent values, as in the general reading.
        let chunk = FastChunk::parse(
            r#"{"error":null,"usage":null,"choices":[{"index":null,"delta":{"tool_calls":null,"content":null},"finish_reason":null}]}"#,
            Shape::Chunk,
        )
        .unwrap();
        assert!(chunk.choice_zero().is_some());
    }
}
