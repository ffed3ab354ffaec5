//! Reading a service's Prometheus `/metrics` in tests and benchmarks.

/// The text of `GET {base_url}/metrics`.
pub async fn scrape(http: &reqwest::Client, base_url: &str) -> String {
    let response = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    response.text().await.expect("/metrics has a text body")
}

/// The sum of the samples of every series named `name` (whatever its labels) in a Prometheus
/// text answer; 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn series_are_summed_by_their_exact_name() {
        let text = "# HELP x_total a counter\n\
                    x_total{a=\"1\"} 2\n\
                    x_total{a=\"2\"} 3\n\
                    x_total_other 100\n\
                    y 7\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
        assert_eq!(metric_sum(text, "y"), 7.0);
        assert_eq!(metric_sum(text, "z"), 0.0);
    }
}
