"""What one HTTP request may ask of the server: the app (recstack.serve.app) enforces these limits, and
`recstack serve` (recstack.serve.server) takes them as the defaults and bounds of its options. Their
own module, so that neither of those two imports the other for them."""

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 30
DEFAULT_MAX_CANDIDATES = 4096
DEFAULT_MAX_QUERIES = 64
DEFAULT_MAX_IN_FLIGHT = 256
