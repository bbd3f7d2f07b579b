"""What callers run, installed with the [tools] extra: the signing HTTP client
(client.py), the customer commands of `xcloud` (customer_cli.py), the bulk importer
(importer.py) and realistic fake customers (fake.py).

May import: domain, auth.signing, api (header names, schemas), exit_codes. The server never
imports tools.
"""
