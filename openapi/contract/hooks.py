"""Schemathesis hooks for the Nexus contract run.

The agent routes take the manifest as raw YAML (`application/yaml`, `application/x-yaml`),
which the document types as binary text so that generated clients send the file as it is.
Schemathesis cannot derive such bodies from a schema, so this module registers a strategy
for both media types: manifests shaped like the document's `AgentManifest` schema
(valid names, versions and models, plus unknown fields the server must keep), written as
YAML.
"""

import schemathesis
import yaml
from hypothesis import strategies as st

NAME = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
TEXT = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
VERSION = st.builds("{}.{}.{}".format, st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
EXTRA = st.dictionaries(st.from_regex(r"\Ax-[a-z]{1,8}\Z"), st.one_of(st.integers(-(2**63), 2**63 - 1), TEXT, st.booleans()), max_size=3)

PROVIDER_MODEL = st.fixed_dictionaries({"provider": TEXT, "model": TEXT})
ROLE_MODEL = st.fixed_dictionaries({"candidates": st.lists(st.fixed_dictionaries({"source": TEXT, "model": TEXT}), min_size=1, max_size=3)})
MODEL = st.one_of(
    st.fixed_dictionaries({"primary": PROVIDER_MODEL}, optional={"fallback": PROVIDER_MODEL}),
    st.fixed_dictionaries({"default": ROLE_MODEL}),
    st.fixed_dictionaries({"roles": st.dictionaries(st.from_regex(r"\A[a-z]{1,10}\Z"), ROLE_MODEL, min_size=1, max_size=2)}),
)


@st.composite
def manifests(draw):
    metadata = {"name": draw(NAME)}
    if draw(st.booleans()):
        metadata["version"] = draw(VERSION)
    spec = {"model": draw(MODEL), **draw(EXTRA)}
    document = {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": metadata, "spec": spec}
    return yaml.safe_dump(document, allow_unicode=True).encode()


schemathesis.openapi.media_type("application/yaml", manifests(), aliases=["application/x-yaml"])
