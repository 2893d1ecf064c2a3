"""Uploads rows with Microsoft's own Python client (azure-monitor-ingestion, azure-identity)
to the local Azure stand-in. Arguments: authority/endpoint URL, tenant, client id, secret,
DCR immutable id, stream, JSON file holding the rows. Prints "uploaded N" on success, or
"error TYPE: MESSAGE" and exits 3 on an Azure SDK error."""

import json
import sys

from azure.core.exceptions import AzureError
from azure.identity import ClientSecretCredential
from azure.monitor.ingestion import LogsIngestionClient

url, tenant, client_id, secret, dcr, stream, rows_file = sys.argv[1:8]
with open(rows_file, encoding="utf-8") as f:
    rows = json.load(f)

# The stand-in is the authority: no instance discovery (that would ask login.microsoftonline.com).
credential = ClientSecretCredential(
    tenant, client_id, secret, authority=url, disable_instance_discovery=True, connection_timeout=5, read_timeout=10
)
client = LogsIngestionClient(endpoint=url, credential=credential, connection_timeout=5, read_timeout=10, retry_total=0)
try:
    client.upload(rule_id=dcr, stream_name=stream, logs=rows)
except AzureError as e:
    print(f"error {type(e).__name__}: {e}", flush=True)
    sys.exit(3)
finally:
    client.close()
    credential.close()
print(f"uploaded {len(rows)}", flush=True)
