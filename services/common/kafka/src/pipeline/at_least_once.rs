//! At least once: idempotent produce, outputs in input order, offsets stored only behind
//! confirmed outputs. Lower latency than a transaction; a crash may repeat the outputs of the
//! records since the last commit, never lose one.

use futures::stream::{FuturesOrdered, StreamExt};
use posflow_runtime::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use std::future::Future;
use std::time::Duration;

use super::{
    consumed, produce_until_confirmed, transform_with_retry, Input, Output, PipelineError, Retry,
};

/// Runs until shutdown, then drains: in-flight outputs finish (bounded by `drain`), their offsets
/// are stored and committed synchronously.
pub async fn run<F, Fut>(
    consumer: &StreamConsumer<crate::clients::LagContext>,
    producer: &FutureProducer,
    window: usize,
    drain: Duration,
    ctx: &Context,
    mut transform: F,
) -> Result<(), PipelineError>
where
    F: FnMut(Input) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, Retry>>,
{
    let mut inflight = FuturesOrdered::new();
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                // Abandoned at shutdown: neither this offset nor any later one may be stored.
                let Some((topic, partition, offset)): Option<(String, i32, i64)> = done else { break };
                // After a rebalance the partition may be gone: its new owner re-reads from the
                // last committed offset, so a failed store only means a repeat, never a loss.
                if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                    tracing::debug!(error = %e, topic, partition, "offset not stored (partition revoked?)");
                }
            }
            msg = consumer.recv(), if draining.is_none() && inflight.len() < window => {
                let Some(msg) = consumed(msg, ctx).await? else { continue };
                let input = Input::detach(&msg);
                drop(msg);
                let position = (input.topic.clone(), input.partition, input.offset);
                let outputs = transform_with_retry(&mut transform, input, ctx).await;
                let Some(outputs) = outputs else { break };
                let producer = producer.clone();
                let ctx = ctx.clone();
                inflight.push_back(async move {
                    for o in outputs {
                        produce_until_confirmed(&producer, &o, &ctx).await?;
                    }
                    Some(position)
                });
            }
            _ = ctx.shutdown.wait(), if draining.is_none() => {
                tracing::info!(in_flight = inflight.len(), "draining");
                draining = Some(tokio::time::Instant::now() + drain);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if draining.is_some() => {}
        }
        if let Some(deadline) = draining {
            if inflight.is_empty() || tokio::time::Instant::now() > deadline {
                break;
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
    Ok(())
}
