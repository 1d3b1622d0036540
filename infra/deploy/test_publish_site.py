"""Tests of publish_site.py against moto's AWS, in-process (no server, no network, no account).

Run: .venv/bin/python -m unittest discover -s infra/deploy -p 'test_*.py' -v
(scripts/test does; `moto` comes from tests/requirements.txt.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import unittest
from pathlib import Path

# Dummy credentials before boto3 is imported anywhere: the tests must never reach a real account,
# whatever the caller's environment holds.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

import publish_site  # noqa: E402
from publish_site import IMMUTABLE, REVALIDATE, PublishError, cache_control, content_type, publish  # noqa: E402

REGION = "eu-west-1"
STACK = "stockpulse-keys-test"
SITE_URL = "https://d111111abcdef8.cloudfront.net/"
COGNITO_DOMAIN = f"https://stockpulse-keys-test.auth.{REGION}.amazoncognito.com"
CLIENT_ID = "4example0client0id0abcdefgh"


def stack_template(extra_outputs: dict[str, str] | None = None) -> str:
    """A stack with the site bucket and the outputs the real template exports (the distribution
    comes in as a parameter: moto's CloudFormation does not create CloudFront distributions)."""
    outputs = {
        "SiteBucketName": {"Value": {"Ref": "SiteBucket"}},
        "DistributionId": {"Value": {"Ref": "DistributionIdParam"}},
        "SiteUrl": {"Value": SITE_URL},
        "UserPoolClientId": {"Value": CLIENT_ID},
        "CognitoDomainUrl": {"Value": COGNITO_DOMAIN},
        "ApiUrl": {"Value": "https://abc123.execute-api.eu-west-1.amazonaws.com"},
        "UserPoolId": {"Value": f"{REGION}_Example1"},
    }
    for name, value in (extra_outputs or {}).items():
        if value is None:
            outputs.pop(name)
        else:
            outputs[name] = {"Value": value}
    return json.dumps(
        {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Parameters": {"DistributionIdParam": {"Type": "String"}},
            "Resources": {"SiteBucket": {"Type": "AWS::S3::Bucket"}},
            "Outputs": outputs,
        }
    )


def write_dist(root: Path) -> Path:
    dist = root / "dist"
    files = {
        "index.html": "<!doctype html><script type=module src=/assets/app-abc123.js></script>",
        "assets/app-abc123.js": "console.log('app');",
        "assets/index-CnqTOwqO.css": "body{}",
        "docs/index.html": "<!doctype html><title>Guide</title>",
        "docs/docs.css": "main{}",
        "favicon.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>",
    }
    for name, text in files.items():
        path = dist / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dist


def create_distribution(cloudfront) -> str:
    answer = cloudfront.create_distribution(
        DistributionConfig={
            "CallerReference": "stockpulse-test",
            "Comment": "site",
            "Enabled": True,
            "DefaultRootObject": "index.html",
            "Origins": {
                "Quantity": 1,
                "Items": [
                    {
                        "Id": "site",
                        "DomainName": "site.s3.eu-west-1.amazonaws.com",
                        "S3OriginConfig": {"OriginAccessIdentity": ""},
                    }
                ],
            },
            "DefaultCacheBehavior": {
                "TargetOriginId": "site",
                "ViewerProtocolPolicy": "redirect-to-https",
                "MinTTL": 0,
                "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                "TrustedSigners": {"Enabled": False, "Quantity": 0},
            },
        }
    )
    return answer["Distribution"]["Id"]


class PublishAgainstMoto(unittest.TestCase):
    def setUp(self) -> None:
        self.mock = mock_aws()
        self.mock.start()
        self.addCleanup(self.mock.stop)
        self.session = boto3.Session(region_name=REGION)
        self.s3 = self.session.client("s3")
        self.cloudfront = self.session.client("cloudfront")
        self.cloudformation = self.session.client("cloudformation")
        self.distribution_id = create_distribution(self.cloudfront)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dist = write_dist(Path(tmp.name))

    def create_stack(self, extra_outputs: dict[str, str] | None = None) -> str:
        self.cloudformation.create_stack(
            StackName=STACK,
            TemplateBody=stack_template(extra_outputs),
            Parameters=[{"ParameterKey": "DistributionIdParam", "ParameterValue": self.distribution_id}],
        )
        outputs = self.cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]
        return next(o["OutputValue"] for o in outputs if o["OutputKey"] == "SiteBucketName")

    def objects(self, bucket: str) -> dict[str, dict]:
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {key: self.s3.get_object(Bucket=bucket, Key=key) for key in keys}

    def test_publishes_the_site_syncs_the_bucket_and_invalidates(self) -> None:
        bucket = self.create_stack()
        # Left over from an earlier deployment: an old bundle and a page the build no longer has.
        self.s3.put_object(Bucket=bucket, Key="assets/app-old999.js", Body=b"old")
        self.s3.put_object(Bucket=bucket, Key="old-page.html", Body=b"old")

        result = publish(STACK, self.dist, session=self.session, wait=True)

        expected = {
            "index.html": ("text/html; charset=utf-8", REVALIDATE),
            "config.json": ("application/json; charset=utf-8", REVALIDATE),
            "docs/index.html": ("text/html; charset=utf-8", REVALIDATE),
            "docs/docs.css": ("text/css; charset=utf-8", REVALIDATE),
            "favicon.svg": ("image/svg+xml", REVALIDATE),
            "assets/app-abc123.js": ("text/javascript; charset=utf-8", IMMUTABLE),
            "assets/index-CnqTOwqO.css": ("text/css; charset=utf-8", IMMUTABLE),
        }
        objects = self.objects(bucket)
        self.assertEqual(set(objects), set(expected), "the bucket holds exactly the build + config.json")
        for key, (ctype, cache) in expected.items():
            with self.subTest(key=key):
                self.assertEqual(objects[key]["ContentType"], ctype)
                self.assertEqual(objects[key]["CacheControl"], cache)
        self.assertEqual(objects["assets/app-abc123.js"]["Body"].read(), b"console.log('app');")
        self.assertEqual(sorted(result.deleted), ["assets/app-old999.js", "old-page.html"])
        self.assertEqual(result.uploaded[-1], "index.html", "index.html goes up last")

        config = json.loads(objects["config.json"]["Body"].read())
        self.assertEqual(
            config,
            {
                "auth": "cognito",
                "cognito": {
                    "domain": COGNITO_DOMAIN,
                    "client_id": CLIENT_ID,
                    "redirect_uri": SITE_URL,
                    "logout_uri": SITE_URL,
                    "scopes": ["openid", "email", "stockpulse-keys/api"],
                },
            },
        )

        invalidations = self.cloudfront.list_invalidations(DistributionId=self.distribution_id)
        items = invalidations["InvalidationList"].get("Items", [])
        self.assertEqual([i["Id"] for i in items], [result.invalidation_id])
        batch = self.cloudfront.get_invalidation(DistributionId=self.distribution_id, Id=result.invalidation_id)[
            "Invalidation"
        ]["InvalidationBatch"]
        self.assertEqual(batch["Paths"]["Items"], ["/*"])

    def test_publishing_twice_keeps_the_site_and_invalidates_again(self) -> None:
        bucket = self.create_stack()
        first = publish(STACK, self.dist, session=self.session)
        second = publish(STACK, self.dist, session=self.session)
        self.assertEqual(second.deleted, [])
        self.assertNotEqual(first.invalidation_id, second.invalidation_id)
        self.assertIn("index.html", self.objects(bucket))

    def test_dry_run_changes_nothing(self) -> None:
        bucket = self.create_stack()
        self.s3.put_object(Bucket=bucket, Key="stale.txt", Body=b"old")
        result = publish(STACK, self.dist, session=self.session, dry_run=True)
        self.assertEqual(result.deleted, ["stale.txt"])
        self.assertIn("config.json", result.uploaded)
        self.assertEqual(set(self.objects(bucket)), {"stale.txt"})
        self.assertIsNone(result.invalidation_id)
        invalidations = self.cloudfront.list_invalidations(DistributionId=self.distribution_id)
        self.assertEqual(invalidations["InvalidationList"]["Quantity"], 0)

    def test_refuses_a_missing_build_and_leaves_the_bucket_alone(self) -> None:
        bucket = self.create_stack()
        self.s3.put_object(Bucket=bucket, Key="index.html", Body=b"live")
        (self.dist / "index.html").unlink()
        with self.assertRaisesRegex(PublishError, "index.html is missing"):
            publish(STACK, self.dist, session=self.session)
        self.assertEqual(set(self.objects(bucket)), {"index.html"})

    def test_refuses_a_stack_without_the_site_outputs(self) -> None:
        self.create_stack({"CognitoDomainUrl": None, "UserPoolClientId": None})
        with self.assertRaisesRegex(PublishError, "UserPoolClientId, CognitoDomainUrl"):
            publish(STACK, self.dist, session=self.session)

    def test_refuses_a_site_url_cognito_would_not_match(self) -> None:
        self.create_stack({"SiteUrl": "https://keys.example.com"})
        with self.assertRaisesRegex(PublishError, "ending with '/'"):
            publish(STACK, self.dist, session=self.session)

    def test_the_command_line_publishes(self) -> None:
        bucket = self.create_stack()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = publish_site.main(["--stack", STACK, "--dist", str(self.dist), "--region", REGION])
        self.assertEqual(code, 0)
        self.assertIn("config.json", self.objects(bucket))
        self.assertIn("config.json  [application/json; charset=utf-8; no-cache]", out.getvalue())
        self.assertIn("for /* created", out.getvalue())

    def test_the_command_line_reports_a_refusal_without_a_traceback(self) -> None:
        self.create_stack({"SiteUrl": "http://keys.example.com/"})
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = publish_site.main(["--stack", STACK, "--dist", str(self.dist), "--region", REGION])
        self.assertEqual(code, 1)
        self.assertIn("SiteUrl must be https://", err.getvalue())


class FakeCloudFront:
    """Answers get_invalidation with the given statuses in turn (CloudFront's own spelling)."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.calls = 0

    def get_invalidation(self, DistributionId: str, Id: str) -> dict:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return {"Invalidation": {"Id": Id, "Status": status}}


class Helpers(unittest.TestCase):
    def test_waiting_polls_until_cloudfront_says_completed(self) -> None:
        fake = FakeCloudFront(["InProgress", "InProgress", "Completed"])
        publish_site.wait_for_invalidation(fake, "E123", "I123", timeout_s=5, poll_s=0)
        self.assertEqual(fake.calls, 3)

    def test_waiting_gives_up_after_the_timeout(self) -> None:
        fake = FakeCloudFront(["InProgress"])
        with self.assertRaisesRegex(PublishError, "not completed"):
            publish_site.wait_for_invalidation(fake, "E123", "I123", timeout_s=0, poll_s=0)

    def test_content_types(self) -> None:
        cases = {
            "index.html": "text/html; charset=utf-8",
            "assets/x-AbCd1234.js": "text/javascript; charset=utf-8",
            "assets/x-AbCd1234.css": "text/css; charset=utf-8",
            "assets/font-AbCd1234.woff2": "font/woff2",
            "icon.PNG": "image/png",
            "blob.unknownext": "application/octet-stream",
        }
        for key, expected in cases.items():
            with self.subTest(key=key):
                self.assertEqual(content_type(key), expected)

    def test_only_hashed_assets_are_immutable(self) -> None:
        self.assertEqual(cache_control("assets/index-CnqTOwqO.js"), IMMUTABLE)
        self.assertEqual(cache_control("assets/app-abc123.js"), IMMUTABLE)
        for key in ("index.html", "config.json", "docs/security.html", "assets/index-styles.css", "app-abc123.js"):
            with self.subTest(key=key):
                self.assertEqual(cache_control(key), REVALIDATE)


if __name__ == "__main__":
    unittest.main()
