"""The only code with SQL: the schema, the engines, and the reads and writes of every table."""
