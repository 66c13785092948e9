"""The live federation: the TLS server's sessions as a pool of sites, typed failures, retries and circuit
breakers, the ledger writer and the status file `mor coordinator status` reads."""
