"""Platform and outgoing-call instrumentation for gpuledger."""
