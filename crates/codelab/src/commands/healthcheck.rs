//! `codelab healthcheck --url URL`: the container health check, without curl in the image.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Arguments of `codelab healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Health URL to probe.
    #[arg(long, default_value = "http://127.0.0.1:8000/health")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Exit 0 when the URL answers 2xx, 1 otherwise (with the reason on stderr).
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .context("cannot create an HTTP client")?;
    match client.get(&args.url).send().await {
        Ok(response) if response.status().is_success() => {
            let body = response.text().await.unwrap_or_default();
            println!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            eprintln!("unhealthy: {} answered {}", args.url, response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("unreachable: {}: {error}", args.url);
            Ok(ExitCode::FAILURE)
        }
    }
}
