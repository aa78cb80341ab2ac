//! posflow-notifier: merchant notification. This version is the stage's frame —
//! it consumes its input in its own consumer group, decodes every record, reports health and
//! metrics, and commits offsets — so it deploys and scales like the others; delivery (webhooks, email) comes in
//! issue #6.

use clap::Parser;
use posflow_kafka::pipeline::consume_and_decode;
use posflow_kafka::KafkaArgs;
use posflow_runtime::metrics::counter_vec;
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::TransactionValidated;

/// posflow-notifier: delivers transactions to merchants by webhook and email.
#[derive(Debug, Parser)]
#[command(name = "posflow-notifier", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        e.into_result(self)
    }
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    let received = counter_vec(
        "posflow_notifier_received_total",
        "Validated transactions consumed, by decode outcome",
        &["outcome"],
    );
    let topic = args.kafka.topics().validated();
    let drain = args.common.drain();
    consume_and_decode::<TransactionValidated>(
        &args.kafka,
        "notifier",
        &topic,
        &received,
        &ctx,
        drain,
    )
    .await
}
