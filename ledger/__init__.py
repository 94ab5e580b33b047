"""The ledger: pure money decisions (wallet, pricing, money), the event log, and the ledger role."""
