"""The HTTP API: the contract, the fast path, fuzzing, hostile input, and the audit routes
(export, import, verify, rewind, the decision queries, what-if)."""
