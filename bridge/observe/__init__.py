"""What the bridge shows about itself: metrics (`metrics`), the access and audit log (`log`),
and W3C trace context (`trace`)."""
