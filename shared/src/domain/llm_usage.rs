//! LLM token usage, read from provider answers: whole JSON bodies and server-sent event streams.
//!
//! Shapes recognised (by their fields, so OpenAI-compatible providers such as Mistral and Groq
//! are covered too):
//! - OpenAI: `usage.prompt_tokens` / `usage.completion_tokens`; streamed, in the last chunk when
//!   the request set `stream_options.include_usage` (the proxy adds it when the client did not).
//! - Anthropic: `usage.input_tokens` / `usage.output_tokens`; streamed, `message_start` carries the
//!   input tokens and every `message_delta` the cumulative output tokens (the last one wins).
//! - Gemini: `usageMetadata.promptTokenCount` / `candidatesTokenCount` (+ `thoughtsTokenCount`),
//!   cumulative in every streamed chunk.

use serde_json::Value;

use super::catalog::Provider;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The model the provider says answered, for prices.
    pub model: Option<String>,
}

impl TokenUsage {
    pub fn is_empty(&self) -> bool {
        self.input_tokens == 0 && self.output_tokens == 0
    }

    /// Estimated cost in millionths of a US dollar from the provider's catalog prices (the
    /// longest model prefix that matches); 0 without a price.
    pub fn cost_micro_usd(&self, provider: &Provider) -> u64 {
        let Some(model) = self.model.as_deref() else { return 0 };
        let Some(price) = provider.pricing.iter().filter(|p| model.starts_with(&p.model_prefix)).max_by_key(|p| p.model_prefix.len())
        else {
            return 0;
        };
        // USD per million tokens × tokens = micro-USD.
        (price.input_usd_per_mtok * self.input_tokens as f64 + price.output_usd_per_mtok * self.output_tokens as f64).round() as u64
    }

    /// Folds one JSON document (a whole answer or one streamed event) into the running totals.
    pub fn observe(&mut self, json: &Value) {
        let number = |v: Option<&Value>| v.and_then(Value::as_u64);
        if let Some(model) = json.get("model").or_else(|| json.pointer("/message/model")).or_else(|| json.get("modelVersion"))
            && let Some(model) = model.as_str()
        {
            self.model = Some(model.to_owned());
        }
        // Anthropic streaming: input tokens at the start, cumulative output tokens in deltas.
        match json.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(usage) = json.pointer("/message/usage") {
                    self.input_tokens = number(usage.get("input_tokens")).unwrap_or(self.input_tokens);
                    self.output_tokens = number(usage.get("output_tokens")).unwrap_or(self.output_tokens);
                }
                return;
            }
            Some("message_delta") => {
                if let Some(usage) = json.get("usage") {
                    self.input_tokens = number(usage.get("input_tokens")).filter(|n| *n > 0).unwrap_or(self.input_tokens);
                    self.output_tokens = number(usage.get("output_tokens")).unwrap_or(self.output_tokens);
                }
                return;
            }
            _ => {}
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            if let Some(prompt) = number(usage.get("prompt_tokens")) {
                self.input_tokens = prompt;
                self.output_tokens = number(usage.get("completion_tokens")).unwrap_or(0);
            } else if let Some(input) = number(usage.get("input_tokens")) {
                self.input_tokens = input;
                self.output_tokens = number(usage.get("output_tokens")).unwrap_or(0);
            }
        }
        if let Some(meta) = json.get("usageMetadata") {
            self.input_tokens = number(meta.get("promptTokenCount")).unwrap_or(self.input_tokens);
            let candidates = number(meta.get("candidatesTokenCount")).unwrap_or(0);
            let thoughts = number(meta.get("thoughtsTokenCount")).unwrap_or(0);
            if candidates + thoughts > 0 {
                self.output_tokens = candidates + thoughts;
            }
        }
    }
}

/// Reads usage from a whole JSON answer.
pub fn from_body(body: &[u8]) -> TokenUsage {
    let mut usage = TokenUsage::default();
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        usage.observe(&json);
    }
    usage
}

/// Reads usage from an SSE stream fed chunk by chunk; events may be split anywhere.
#[derive(Debug, Default)]
pub struct SseUsageReader {
    pending: Vec<u8>,
    pub usage: TokenUsage,
}

/// Lines longer than this are skipped rather than buffered without bound.
const MAX_EVENT_LINE: usize = 1 << 20;

impl SseUsageReader {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line);
        }
        if self.pending.len() > MAX_EVENT_LINE {
            self.pending.clear();
        }
    }

    /// Reads a last line that had no newline.
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.line(&rest);
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return;
        }
        if let Ok(json) = serde_json::from_slice::<Value>(data) {
            self.usage.observe(&json);
        }
    }
}

/// For an OpenAI-style streamed chat request without `stream_options.include_usage`, the body
/// with it set, so that the stream ends with a usage chunk. `None`: leave the body as it is.
pub fn with_stream_usage(body: &[u8]) -> Option<Vec<u8>> {
    /// Only `stream` is read first: most requests do not stream and need no rewrite.
    #[derive(serde::Deserialize)]
    struct Streaming {
        #[serde(default)]
        stream: Option<Value>,
    }
    if serde_json::from_slice::<Streaming>(body).ok()?.stream != Some(Value::Bool(true)) {
        return None;
    }
    let mut json: Value = serde_json::from_slice(body).ok()?;
    let object = json.as_object_mut()?;
    if object.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let options = object.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    serde_json::to_vec(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(events: &[&str]) -> Vec<u8> {
        events.iter().map(|e| format!("data: {e}\n\n")).collect::<String>().into_bytes()
    }

    fn read_in_chunks(stream: &[u8], size: usize) -> TokenUsage {
        let mut reader = SseUsageReader::default();
        for chunk in stream.chunks(size) {
            reader.feed(chunk);
        }
        reader.finish();
        reader.usage
    }

    #[test]
    fn openai_plain_and_streamed() {
        let u = from_body(br#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#);
        assert_eq!((u.input_tokens, u.output_tokens, u.model.as_deref()), (12, 34, Some("gpt-4o-mini")));
        let stream = sse(&[
            r#"{"model":"gpt-4o-mini","choices":[{"delta":{"content":"Hi"}}],"usage":null}"#,
            r#"{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#,
            "[DONE]",
        ]);
        for size in [1, 7, 64, 4096] {
            let u = read_in_chunks(&stream, size);
            assert_eq!((u.input_tokens, u.output_tokens), (9, 3), "chunk size {size}");
        }
    }

    #[test]
    fn anthropic_streamed_usage_is_cumulative() {
        let stream = sse(&[
            r#"{"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":25,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":42}}"#,
            r#"{"type":"message_stop"}"#,
        ]);
        let u = read_in_chunks(&stream, 5);
        assert_eq!((u.input_tokens, u.output_tokens, u.model.as_deref()), (25, 42, Some("claude-sonnet-4-5")));
        let plain = from_body(br#"{"type":"message","model":"claude-haiku-4-5","usage":{"input_tokens":7,"output_tokens":8}}"#);
        assert_eq!((plain.input_tokens, plain.output_tokens), (7, 8));
    }

    #[test]
    fn gemini_usage_metadata() {
        let stream = sse(&[
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2},"modelVersion":"gemini-2.5-flash"}"#,
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":10,"thoughtsTokenCount":5}}"#,
        ]);
        let u = read_in_chunks(&stream, 3);
        assert_eq!((u.input_tokens, u.output_tokens, u.model.as_deref()), (4, 15, Some("gemini-2.5-flash")));
    }

    #[test]
    fn stream_usage_is_requested_only_when_missing() {
        let body = with_stream_usage(br#"{"model":"m","stream":true}"#).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json.pointer("/stream_options/include_usage"), Some(&Value::Bool(true)));
        assert!(with_stream_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        assert!(with_stream_usage(br#"{"stream":false}"#).is_none());
        assert!(with_stream_usage(b"not json").is_none());
    }
}
