"""Tool execution for the Processor: SQL, HTTP, python and rule nodes on a CPU pool."""
