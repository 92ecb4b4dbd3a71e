"""The diagnostic echo service: ``demo.echo.v1.EchoService``, for tests and benchmarks."""
