"""Dumps the whole state of a moto server that can hold a key into JSON files, for the canary scan.

Usage: python tests/moto_dump.py MOTO_URL OUT_DIR LABEL

Writes `OUT_DIR/LABEL-<service>.json` for dynamodb, secretsmanager, kms, sqs and events, then
prints one summary line. The canary scan (`canary-scan`) reads them byte for byte like every
other artifact. Everything is read through the server's own API, in every region boto3 knows for
the service, in moto's default account (the only one the tests use):
- DynamoDB: every item of every table (`Scan`, consistent).
- Secrets Manager: every secret (`DescribeSecret`: name, description, tags, stages) and every
  version's SecretString / SecretBinary (deprecated versions too). A secret scheduled for
  deletion cannot be read, so it is restored, read and scheduled for deletion again.
- KMS: keys, key policies, tags, grants, aliases (moto keeps no plaintext: `Encrypt` and
  `GenerateDataKey` are computed, so a leak through KMS would show in DynamoDB or the logs).
- SQS: queue attributes and every message (received with a long visibility timeout, so each is
  read once, then made visible again).
- EventBridge: buses, rules and their targets.
(IAM, S3 and STS are not dumped: the code writes no key material there.)
moto's `/moto-api/data.json` is not used: it does not show DynamoDB item values, and it walks
every model instance moto ever created (hundreds of thousands of DynamoDB item copies after a
run), which takes minutes. A server the tests put under IAM enforcement (`/moto-api/reset-auth`)
would refuse the reads, so the dump first turns enforcement off (reset-auth = inf): it runs when
the tests that use the server are over, and its restores and receives are harmless then.

Binary values (DynamoDB `B`/`BS`, SecretBinary) are written as base64 and also as latin-1 text,
so that an ASCII canary inside a binary value keeps its bytes in the file.

THE ONE EXCEPTION, the Secrets Manager vault's credential values. That vault
(shared/src/adapters/aws/secrets_manager_vault.rs) is an encrypted store: AWS encrypts the secret,
and its SecretString holds the key in plaintext by design. Those values, and only those, are
replaced by REDACTED. A secret version counts as a vault credential only if ALL of these hold:
  1. the secret carries the vault's tags: `managed-by` = `stockpulse-keys`,
     `stockpulse:workspace` = W and `stockpulse:key-id` = K (the vault sets them at CreateSecret);
  2. the secret's name ends with `W/K` (the vault names it `<prefix>W/K`);
  3. the version's SecretString is a JSON object with exactly the keys `workspace`, `key_id`,
     `version`, `credentials`, where workspace = W, key_id = K, version is an integer and
     credentials is an object of strings (the vault's value shape).
Then only the string values inside `credentials` are replaced; the field names, the rest of the
value, every other attribute (name, description, tags, ...) and every other version stay and are
scanned. Any other secret (the vault's fingerprint-key secret included), a SecretBinary, a
version of another shape, and all of DynamoDB, KMS, SQS, EventBridge are dumped whole.
"""

import base64
import json
import os
import sys
import urllib.request

import boto3
import botocore.config

REDACTED = "REDACTED(vault credential, see tests/moto_dump.py)"
VAULT_KEYS = {"workspace", "key_id", "version", "credentials"}


def http(url: str, data: bytes | None = None) -> bytes:
    # text/plain: with urllib's default form type, moto's reset-auth would read an empty body.
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def as_text(raw: bytes) -> str:
    return raw.decode("latin-1")


def plain(value):
    """JSON-ready form of what boto3 returns (bytes in B / BS attributes)."""
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(value).decode(), "latin1": as_text(bytes(value))}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    return value


def vault_binding(secret: dict) -> tuple[str, str] | None:
    """(workspace, key id) when the secret (DescribeSecret) is one the Secrets Manager vault
    created (rules 1, 2)."""
    tags = {t.get("Key"): t.get("Value") for t in secret.get("Tags") or []}
    workspace, key_id = tags.get("stockpulse:workspace"), tags.get("stockpulse:key-id")
    if tags.get("managed-by") != "stockpulse-keys" or not workspace or not key_id:
        return None
    if not secret.get("Name", "").endswith(f"{workspace}/{key_id}"):
        return None
    return workspace, key_id


def redact_vault_value(text, binding: tuple[str, str]):
    """The value with its credential strings replaced, or None when it is not of the vault's
    shape for this binding (rule 3)."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != VAULT_KEYS:
        return None
    credentials = value["credentials"]
    if (value["workspace"], value["key_id"]) != binding or type(value["version"]) is not int:
        return None
    if not isinstance(credentials, dict) or not all(isinstance(v, str) for v in credentials.values()):
        return None
    value["credentials"] = {field: REDACTED for field in credentials}
    return json.dumps(value)


REGION = "us-east-1"
CONFIG = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5}, read_timeout=120, connect_timeout=20)


SESSION = boto3.session.Session()


def client(url: str, service: str, region: str):
    return SESSION.client(
        service, endpoint_url=url, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing", config=CONFIG
    )


def regions(service: str) -> list[str]:
    return sorted(set(SESSION.get_available_regions(service)) | {REGION})


def strip(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def pages(api, operation: str, key: str, **args) -> list:
    if api.can_paginate(operation):
        return [x for page in api.get_paginator(operation).paginate(**args) for x in page.get(key, [])]
    out, token = [], {}
    while True:
        page = getattr(api, operation)(**args, **token)
        out.extend(page.get(key, []))
        if not page.get("NextToken"):
            return out
        token = {"NextToken": page["NextToken"]}


def dump_dynamodb(url: str) -> tuple[list, str]:
    out = []
    for region in regions("dynamodb"):
        api = client(url, "dynamodb", region)
        for name in pages(api, "list_tables", "TableNames"):
            items = pages(api, "scan", "Items", TableName=name, ConsistentRead=True)
            out.append({"region": region, "table": name, "items": plain(items)})
    return out, f"{len(out)} DynamoDB tables ({sum(len(t['items']) for t in out)} items)"


def dump_secretsmanager(url: str) -> tuple[list, str]:
    out, redacted = [], 0
    for region in regions("secretsmanager"):
        api = client(url, "secretsmanager", region)
        for listed in pages(api, "list_secrets", "SecretList", IncludePlannedDeletion=True):
            arn = listed["ARN"]
            secret = strip(api.describe_secret(SecretId=arn))
            deleted = secret.get("DeletedDate") is not None
            if deleted:
                api.restore_secret(SecretId=arn)
            try:
                versions = pages(api, "list_secret_version_ids", "Versions", SecretId=arn, IncludeDeprecated=True)
                secret["Versions"] = []
                binding = vault_binding(secret)
                for version in versions:
                    value = strip(api.get_secret_value(SecretId=arn, VersionId=version["VersionId"]))
                    if binding is not None and "SecretString" in value:
                        replaced = redact_vault_value(value["SecretString"], binding)
                        if replaced is not None:
                            value["SecretString"] = replaced
                            redacted += 1
                    secret["Versions"].append(plain(value))
            finally:
                if deleted:
                    api.delete_secret(SecretId=arn, RecoveryWindowInDays=7)
            out.append({"region": region, "secret": plain(secret)})
    return out, f"{len(out)} secrets ({redacted} vault credential versions redacted)"


def dump_kms(url: str) -> tuple[list, str]:
    out = []
    for region in regions("kms"):
        api = client(url, "kms", region)
        for key in pages(api, "list_keys", "Keys"):
            key_id = key["KeyId"]
            out.append({
                "region": region,
                "key": strip(api.describe_key(KeyId=key_id)),
                "policy": api.get_key_policy(KeyId=key_id, PolicyName="default").get("Policy"),
                "tags": api.list_resource_tags(KeyId=key_id).get("Tags", []),
                "grants": pages(api, "list_grants", "Grants", KeyId=key_id),
            })
        # moto lists the AWS-managed aliases (`alias/aws/...`) in every region: not ours.
        aliases = [a for a in pages(api, "list_aliases", "Aliases") if not a["AliasName"].startswith("alias/aws/")]
        if aliases:
            out.append({"region": region, "aliases": aliases})
    return plain(out), f"{sum(1 for k in out if 'key' in k)} KMS keys"


def dump_sqs(url: str) -> tuple[list, str]:
    out = []
    for region in regions("sqs"):
        api = client(url, "sqs", region)
        for queue in api.list_queues().get("QueueUrls", []):
            attributes = api.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"]).get("Attributes", {})
            messages = []
            while True:
                got = api.receive_message(
                    QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=43200, WaitTimeSeconds=0,
                    AttributeNames=["All"], MessageAttributeNames=["All"],
                ).get("Messages", [])
                if not got:
                    break
                messages.extend(got)
            # Visible again, so that another dump of this server would read them too.
            for start in range(0, len(messages), 10):
                batch = messages[start:start + 10]
                api.change_message_visibility_batch(QueueUrl=queue, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(batch)
                ])
            out.append({"region": region, "queue": queue, "attributes": attributes, "messages": messages})
    return plain(out), f"{len(out)} SQS queues ({sum(len(q['messages']) for q in out)} messages)"


def dump_events(url: str) -> tuple[list, str]:
    out = []
    for region in regions("events"):
        api = client(url, "events", region)
        for bus in api.list_event_buses().get("EventBuses", []):
            rules = api.list_rules(EventBusName=bus["Name"]).get("Rules", [])
            for rule in rules:
                rule["Targets"] = api.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus["Name"]).get("Targets", [])
            if rules or bus["Name"] != "default":
                out.append({"region": region, "bus": bus, "rules": rules})
    return plain(out), f"{len(out)} event buses with rules"


def main() -> int:
    url, out_dir, label = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    http(f"{url}/moto-api/reset-auth", b"inf")
    os.makedirs(out_dir, exist_ok=True)
    said, total = [], 0
    for service, dump in [
        ("dynamodb", dump_dynamodb), ("secretsmanager", dump_secretsmanager), ("kms", dump_kms),
        ("sqs", dump_sqs), ("events", dump_events),
    ]:
        state, summary = dump(url)
        path = os.path.join(out_dir, f"{label}-{service}.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(state, file, ensure_ascii=False, default=str)
        total += os.path.getsize(path)
        said.append(summary)
    print(f"moto dump {label}: {', '.join(said)}; {total} bytes in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
