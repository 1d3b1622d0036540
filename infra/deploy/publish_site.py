#!/usr/bin/env python3
"""Publish the built web UI to a deployed stack: S3 bucket + CloudFront, with boto3 only.

Usage: publish_site.py --stack stockpulse-keys-prod [--dist frontend/dist] [--wait] [--dry-run]

Reads the stack's Outputs (SiteBucketName, DistributionId, SiteUrl, UserPoolClientId,
CognitoDomainUrl), writes `/config.json` for the page's Cognito sign-in from them, uploads every
file of the dist folder with its Content-Type and Cache-Control, deletes what the bucket holds
that the build no longer has, and invalidates `/*` on the distribution.

Importable: `publish(stack_name, dist_dir, session=..., cloudformation=..., s3=..., cloudfront=...)`
does the whole job and returns what it did (infra/deploy/test_publish_site.py runs it against
moto in-process).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

# boto3 clients have no static types without the stubs packages; `Client` only documents intent.
Client = Any

REQUIRED_OUTPUTS = ("SiteBucketName", "DistributionId", "SiteUrl", "UserPoolClientId", "CognitoDomainUrl")

# The scopes the page asks Cognito for; `stockpulse-keys/api` is the resource server's scope that
# the API's JWT authorizer accepts.
COGNITO_SCOPES = ["openid", "email", "stockpulse-keys/api"]

# Files that name other files and must be fetched fresh after every deployment. "no-cache" still
# lets browsers and CloudFront keep a copy, but they revalidate it (ETag) before each use.
REVALIDATE = "no-cache"
# Content-addressed files: a new build gives them a new name, so a copy never goes stale.
IMMUTABLE = "public, max-age=31536000, immutable"

# Explicit types for what Vite and the user-guide plugin emit: `mimetypes` reads the machine's
# /etc/mime.types, which differs between hosts (`.js` as application/javascript or
# text/javascript, `.woff2` unknown). The site is served with `X-Content-Type-Options: nosniff`,
# so a wrong type is a broken page, not a cosmetic issue.
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".webmanifest": "application/manifest+json; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
}

# Vite names built files `<name>-<hash>.<ext>` with an 8-character base64url hash. A plain word
# such as `index-styles.css` must not pass for a hash, so the hash needs a digit or a capital;
# the rare all-lowercase hash only loses long caching, which is the safe side.
HASHED_NAME = re.compile(r"-(?=[A-Za-z0-9_]*[0-9A-Z])[A-Za-z0-9_]{6,}\.[A-Za-z0-9]+$")


class PublishError(Exception):
    """The stack or the build is not in a state that can be published; nothing was changed."""


@dataclass(frozen=True)
class SiteOutputs:
    bucket: str
    distribution_id: str
    site_url: str
    client_id: str
    cognito_domain: str


@dataclass(frozen=True)
class Upload:
    key: str
    body: bytes
    content_type: str
    cache_control: str


@dataclass
class PublishResult:
    bucket: str
    site_url: str
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    invalidation_id: str | None = None


def stack_outputs(cloudformation: Client, stack_name: str) -> dict[str, str]:
    """The Outputs of a stack that finished deploying; refuses a stack mid-update or rolled back
    (its outputs may describe resources that are going away)."""
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    if not stacks:
        raise PublishError(f"stack {stack_name} not found")
    stack = stacks[0]
    status = stack.get("StackStatus", "")
    if not status.endswith("_COMPLETE") or "ROLLBACK" in status:
        raise PublishError(f"stack {stack_name} is {status}; deploy it successfully first")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def site_outputs(outputs: dict[str, str]) -> SiteOutputs:
    missing = [name for name in REQUIRED_OUTPUTS if not outputs.get(name)]
    if missing:
        raise PublishError(f"the stack lacks the outputs {', '.join(missing)}")
    site_url = outputs["SiteUrl"]
    # The page's sign-in sends the browser back to exactly this URL; Cognito compares it with the
    # app client's callback URLs character by character, trailing slash included.
    if not site_url.startswith("https://") or not site_url.endswith("/"):
        raise PublishError(f"SiteUrl must be https://… ending with '/': {site_url!r}")
    domain = outputs["CognitoDomainUrl"].rstrip("/")
    # The page refuses a non-https Cognito domain (frontend/src/pkce.ts cognitoSettings).
    if not domain.startswith("https://"):
        raise PublishError(f"CognitoDomainUrl must be https://…: {domain!r}")
    return SiteOutputs(
        bucket=outputs["SiteBucketName"],
        distribution_id=outputs["DistributionId"],
        site_url=site_url,
        client_id=outputs["UserPoolClientId"],
        cognito_domain=domain,
    )


def site_config(site: SiteOutputs) -> dict[str, Any]:
    """`/config.json`: switches the page to Cognito's hosted UI (authorization code + PKCE)."""
    return {
        "auth": "cognito",
        "cognito": {
            "domain": site.cognito_domain,
            "client_id": site.client_id,
            "redirect_uri": site.site_url,
            "logout_uri": site.site_url,
            "scopes": list(COGNITO_SCOPES),
        },
    }


def content_type(key: str) -> str:
    suffix = PurePosixPath(key).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or "application/octet-stream"


def cache_control(key: str) -> str:
    """Long caching only for content-addressed files under assets/; everything else (index.html,
    config.json, the user guide's pages and stylesheet) is revalidated, so a deployment shows at
    once without a stale page pointing at assets that are gone."""
    if key.startswith("assets/") and HASHED_NAME.search(key):
        return IMMUTABLE
    return REVALIDATE


def upload_order(key: str) -> tuple[int, str]:
    """Assets first, the pages that reference them after, index.html last: a visitor who gets the
    new index.html mid-deployment finds every file it names."""
    if key == "index.html":
        return (2, key)
    if key.startswith("assets/"):
        return (0, key)
    return (1, key)


def plan_uploads(dist_dir: Path, config: dict[str, Any]) -> list[Upload]:
    if not (dist_dir / "index.html").is_file():
        # An empty or wrong folder would otherwise "sync" the live site away.
        raise PublishError(f"{dist_dir}/index.html is missing: build the frontend first (npm run build)")
    files: dict[str, bytes] = {}
    for path in sorted(dist_dir.rglob("*")):
        if path.is_file():
            files[path.relative_to(dist_dir).as_posix()] = path.read_bytes()
    # The generated config wins over any config.json a development build may have left in dist.
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    return [
        Upload(key=key, body=body, content_type=content_type(key), cache_control=cache_control(key))
        for key, body in sorted(files.items(), key=lambda item: upload_order(item[0]))
    ]


def bucket_keys(s3: Client, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def upload(s3: Client, bucket: str, uploads: list[Upload]) -> list[str]:
    for item in uploads:
        s3.put_object(
            Bucket=bucket,
            Key=item.key,
            Body=item.body,
            ContentType=item.content_type,
            CacheControl=item.cache_control,
        )
    return [item.key for item in uploads]


def delete_stale(s3: Client, bucket: str, stale: list[str]) -> list[str]:
    # DeleteObjects takes at most 1000 keys per call.
    for start in range(0, len(stale), 1000):
        batch = stale[start : start + 1000]
        answer = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
        )
        if answer.get("Errors"):
            raise PublishError(f"could not delete from {bucket}: {answer['Errors']}")
    return stale


def invalidate(cloudfront: Client, distribution_id: str, wait: bool) -> str:
    """Invalidates every path: the revalidated files are few, and one `/*` path costs the same as
    one file (CloudFront bills invalidation paths, a wildcard counting as one)."""
    answer = cloudfront.create_invalidation(
        DistributionId=distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": 1, "Items": ["/*"]},
            # Unique per call, so two deployments in a row are two invalidations, not one replay.
            "CallerReference": f"publish-site-{int(time.time())}-{uuid.uuid4().hex[:8]}",
        },
    )
    invalidation_id: str = answer["Invalidation"]["Id"]
    if wait:
        wait_for_invalidation(cloudfront, distribution_id, invalidation_id)
    return invalidation_id


def wait_for_invalidation(
    cloudfront: Client, distribution_id: str, invalidation_id: str, timeout_s: float = 1200, poll_s: float = 15
) -> None:
    """Polls until CloudFront reports the invalidation done (usually under a minute or two).
    Not botocore's `invalidation_completed` waiter: it matches the status "Completed" exactly,
    and emulators such as moto answer "COMPLETED", on which it would poll until its timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = cloudfront.get_invalidation(DistributionId=distribution_id, Id=invalidation_id)
        if answer["Invalidation"]["Status"].lower() == "completed":
            return
        if time.monotonic() >= deadline:
            raise PublishError(f"invalidation {invalidation_id} not completed after {timeout_s:.0f} s")
        time.sleep(poll_s)


def publish(
    stack_name: str,
    dist_dir: Path | str,
    *,
    session: Any = None,
    cloudformation: Client = None,
    s3: Client = None,
    cloudfront: Client = None,
    wait: bool = False,
    dry_run: bool = False,
) -> PublishResult:
    """Publishes `dist_dir` to the stack's site. Clients not given are made from `session`
    (default: a boto3 Session from the environment)."""
    if session is None and None in (cloudformation, s3, cloudfront):
        import boto3  # imported here so the pure helpers above work without boto3

        session = boto3.Session()
    cloudformation = cloudformation or session.client("cloudformation")
    s3 = s3 or session.client("s3")
    cloudfront = cloudfront or session.client("cloudfront")

    site = site_outputs(stack_outputs(cloudformation, stack_name))
    uploads = plan_uploads(Path(dist_dir), site_config(site))
    wanted = {item.key for item in uploads}
    stale = sorted(bucket_keys(s3, site.bucket) - wanted)
    result = PublishResult(bucket=site.bucket, site_url=site.site_url)
    if dry_run:
        result.uploaded = [item.key for item in uploads]
        result.deleted = stale
        return result

    result.uploaded = upload(s3, site.bucket, uploads)
    # Delete only after everything new is in place: until then the old files may still be named
    # by a page a visitor has open.
    result.deleted = delete_stale(s3, site.bucket, stale)
    result.invalidation_id = invalidate(cloudfront, site.distribution_id, wait)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="CloudFormation stack name, e.g. stockpulse-keys-prod")
    parser.add_argument("--dist", default="frontend/dist", help="the built site (default: frontend/dist)")
    parser.add_argument("--region", help="the stack's region (default: the AWS SDK's)")
    parser.add_argument("--profile", help="AWS profile (default: the AWS SDK's)")
    parser.add_argument("--wait", action="store_true", help="wait until the invalidation has completed")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)

    import boto3

    session = boto3.Session(region_name=args.region, profile_name=args.profile)
    try:
        result = publish(args.stack, args.dist, session=session, wait=args.wait, dry_run=args.dry_run)
    except PublishError as error:
        print(f"publish_site: {error}", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(result.uploaded)} files to s3://{result.bucket}/")
    for key in result.uploaded:
        print(f"  {key}  [{content_type(key)}; {cache_control(key)}]")
    print(f"{'would delete' if args.dry_run else 'deleted'} {len(result.deleted)} stale objects")
    for key in result.deleted:
        print(f"  {key}")
    if result.invalidation_id:
        state = "completed" if args.wait else "created"
        print(f"CloudFront invalidation {result.invalidation_id} for /* {state}")
    print(f"site: {result.site_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
