"""Read models built from the log: balances, usage rows in ClickHouse, tenants."""
