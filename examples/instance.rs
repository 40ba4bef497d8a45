//! A minimal service instance for the quick start: consumes its Baker inbox
//! on NATS, prints how many messages it received each second, and answers
//! requests.
//!
//! `cargo run --example instance -- SERVICE ID [NATS_URL]`

use std::time::Duration;

use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(service), Some(id)) = (args.next(), args.next()) else {
        eprintln!("usage: instance SERVICE ID [NATS_URL]");
        std::process::exit(2);
    };
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(&url).await?;
    let inbox = format!("_baker.{service}.{id}.>");
    let mut messages = client.subscribe(inbox.clone()).await?;
    println!("{id}: consuming {inbox} on {url}");
    let mut received = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(msg) = messages.next() => {
                received += 1;
                if let Some(reply) = msg.reply {
                    let answer = format!("{id} got {}", String::from_utf8_lossy(&msg.payload));
                    client.publish(reply, answer.into()).await?;
                }
            }
            _ = tick.tick() => println!("{id}: received {received}"),
        }
    }
}
