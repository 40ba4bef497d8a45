//! Publishes to a service through Baker for the quick start.
//!
//! `cargo run --example publish -- SUBJECT [COUNT] [NATS_URL]` publishes COUNT
//! messages (default 1000) to SUBJECT, e.g. `baker.orders.created`.
//! `cargo run --example publish -- --request SUBJECT [NATS_URL]` sends one
//! request and prints the reply.

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let request = args.first().is_some_and(|a| a == "--request");
    let rest = if request { &args[1..] } else { &args[..] };
    let Some(subject) = rest.first().cloned() else {
        eprintln!(
            "usage: publish SUBJECT [COUNT] [NATS_URL] | publish --request SUBJECT [NATS_URL]"
        );
        std::process::exit(2);
    };
    if request {
        let url = rest
            .get(1)
            .cloned()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        let client = async_nats::connect(&url).await?;
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject, "hello".into()),
        )
        .await??;
        match reply.headers.as_ref().and_then(|h| h.get("baker-error")) {
            Some(error) => println!("error reply: {error}"),
            None => println!("reply: {}", String::from_utf8_lossy(&reply.payload)),
        }
        return Ok(());
    }
    let count: u64 = rest.get(1).map(|c| c.parse()).transpose()?.unwrap_or(1000);
    let url = rest
        .get(2)
        .cloned()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(&url).await?;
    for n in 0..count {
        client
            .publish(subject.clone(), n.to_string().into())
            .await?;
        if n % 100 == 99 {
            // Core NATS drops messages for slow consumers; pace the demo.
            client.flush().await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    client.flush().await?;
    println!("published {count} messages to {subject}");
    Ok(())
}
