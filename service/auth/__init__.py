"""Who is calling: the request signature (signing.py, pure), the service secrets and
their cache (credentials.py), the sealing of secrets at rest (secretbox.py).

May import: db (the credentials table), error_codes. Never imports api or usecases.
"""
