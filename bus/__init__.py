"""The event bus: event types, the NATS JetStream connection, the embedded server, settings."""
