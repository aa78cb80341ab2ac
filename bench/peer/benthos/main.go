// The benchmark's peer: Benthos v4 (MIT) with only what the MQTT -> Kafka job needs (and its
// Prometheus metrics, which the benchmark reads to know when it is done).
// Built from this wrapper because Benthos' own module has a replace directive (go install
// refuses it); see docs in BENCHMARKS.md ("peer").
package main

import (
	"context"

	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/mqtt"
	_ "github.com/benthosdev/benthos/v4/public/components/prometheus"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	"github.com/benthosdev/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
