//! What an answer cost: per-token prices from the model table's `model_info`, in LiteLLM's own
//! field names so a LiteLLM config carries over (docs/llm-proxy.md, "Prices and cost").
//!
//! A deployment without both an input and an output price has no price: its answers report
//! tokens and no cost, never a guessed one.

use codelab_protocol::openai::Usage;

/// `model_info` field: USD per prompt token.
pub const INPUT_PRICE_FIELD: &str = "input_cost_per_token";
/// `model_info` field: USD per completion token.
pub const OUTPUT_PRICE_FIELD: &str = "output_cost_per_token";
/// `model_info` field: USD per prompt token served from the provider's cache.
pub const CACHE_READ_PRICE_FIELD: &str = "cache_read_input_token_cost";

/// The highest price per token accepted: far above any model's (the dearest list at a few
/// thousandths of a USD), low enough that no token count makes a cost infinite.
pub const MAX_PRICE_PER_TOKEN: f64 = 1.0;

/// USD per token of one deployment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// Per prompt token not served from a cache.
    pub input: f64,
    /// Per completion token.
    pub output: f64,
    /// Per cached prompt token; without it, cached tokens cost the input price.
    pub cache_read: Option<f64>,
}

impl Prices {
    /// The prices of a `model_info` mapping: `Ok(None)` when it sets neither the input nor the
    /// output price, an error naming the field when a price is out of range or only one of the
    /// two is set (half a price would make every cost wrong).
    pub fn from_model_info(info: &serde_norway::Value) -> Result<Option<Prices>, String> {
        let input = price_field(info, INPUT_PRICE_FIELD)?;
        let output = price_field(info, OUTPUT_PRICE_FIELD)?;
        let cache_read = price_field(info, CACHE_READ_PRICE_FIELD)?;
        match (input, output) {
            (Some(input), Some(output)) => Ok(Some(Prices {
                input,
                output,
                cache_read,
            })),
            (None, None) if cache_read.is_none() => Ok(None),
            _ => Err(format!(
                "model_info must set both {INPUT_PRICE_FIELD} and {OUTPUT_PRICE_FIELD} (or \
                 neither, for a model without a price)"
            )),
        }
    }

    /// The cost of `usage` in USD: cached prompt tokens at the cache-read price, the rest of
    /// the prompt at the input price, the completion at the output price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage
            .prompt_tokens_details
            .map_or(0, |details| details.cached_tokens)
            .min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        // Token counts stay far below 2^53, where u64 to f64 is exact.
        uncached as f64 * self.input
            + cached as f64 * self.cache_read.unwrap_or(self.input)
            + usage.completion_tokens as f64 * self.output
    }
}

/// One price field: a number (or a string holding one, as LiteLLM also reads) from 0 to
/// [`MAX_PRICE_PER_TOKEN`].
fn price_field(info: &serde_norway::Value, field: &str) -> Result<Option<f64>, String> {
    let Some(value) = info.get(field) else {
        return Ok(None);
    };
    let number = match value {
        serde_norway::Value::Null => return Ok(None),
        serde_norway::Value::Number(number) => number.as_f64(),
        serde_norway::Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(price) if (0.0..=MAX_PRICE_PER_TOKEN).contains(&price) => Ok(Some(price)),
        _ => Err(format!(
            "model_info.{field} must be a number of USD per token from 0 to \
             {MAX_PRICE_PER_TOKEN}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(yaml: &str) -> serde_norway::Value {
        serde_norway::from_str(yaml).expect("YAML")
    }

    #[test]
    fn litellm_price_fields_are_read() {
        let prices = Prices::from_model_info(&info(
            "input_cost_per_token: 2.5e-6\noutput_cost_per_token: 0.00001\n\
             cache_read_input_token_cost: '1.25e-6'\nmax_tokens: 128000",
        ))
        .expect("valid")
        .expect("priced");
        assert_eq!(
            prices,
            Prices {
                input: 2.5e-6,
                output: 1e-5,
                cache_read: Some(1.25e-6)
            }
        );
        assert_eq!(
            Prices::from_model_info(&info("max_tokens: 8192")).expect("valid"),
            None,
            "no price fields: no price"
        );
    }

    #[test]
    fn bad_or_half_prices_are_refused_with_the_field() {
        for (yaml, field) in [
            (
                "input_cost_per_token: -1\noutput_cost_per_token: 1",
                INPUT_PRICE_FIELD,
            ),
            (
                "input_cost_per_token: 1\noutput_cost_per_token: cheap",
                OUTPUT_PRICE_FIELD,
            ),
            (
                "input_cost_per_token: 1\noutput_cost_per_token: .inf",
                OUTPUT_PRICE_FIELD,
            ),
            (
                "input_cost_per_token: 1.5\noutput_cost_per_token: 1",
                INPUT_PRICE_FIELD,
            ),
            (
                "input_cost_per_token: .nan\noutput_cost_per_token: 1",
                INPUT_PRICE_FIELD,
            ),
            (
                "input_cost_per_token: [1]\noutput_cost_per_token: 1",
                INPUT_PRICE_FIELD,
            ),
            ("input_cost_per_token: 1e-6", OUTPUT_PRICE_FIELD),
            ("cache_read_input_token_cost: 1e-6", INPUT_PRICE_FIELD),
        ] {
            let error = Prices::from_model_info(&info(yaml)).expect_err(yaml);
            assert!(error.contains(field), "{yaml}: {error}");
        }
    }

    #[test]
    fn cached_prompt_tokens_cost_the_cache_read_price() {
        let prices = Prices {
            input: 2.0,
            output: 10.0,
            cache_read: Some(0.5),
        };
        let usage = Usage::new(100, 20).with_cached_tokens(40);
        assert_eq!(prices.cost(&usage), 60.0 * 2.0 + 40.0 * 0.5 + 20.0 * 10.0);
        let without_cache_price = Prices {
            cache_read: None,
            ..prices
        };
        assert_eq!(without_cache_price.cost(&usage), 100.0 * 2.0 + 20.0 * 10.0);
        // A provider reporting more cached tokens than prompt tokens is not believed past
        // the prompt.
        let odd = Usage::new(10, 0).with_cached_tokens(50);
        assert_eq!(prices.cost(&odd), 10.0 * 0.5);
    }
}
