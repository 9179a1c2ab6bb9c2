"""Hypothesis strategies for frames (shared by the codec tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from tunnel.protocol import (
    MAX_WINDOW_SIZE,
    MIN_WINDOW_SIZE,
    BindErrFrame,
    BindFrame,
    BindKind,
    BindMode,
    BindOkFrame,
    BindResult,
    DataFrame,
    Frame,
    GoAwayFrame,
    Hello,
    HelloFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    ResumeRequest,
    RstFrame,
    StreamOffsets,
    UnbindFrame,
    Welcome,
    WelcomeFrame,
    WindowFrame,
    error_code_from_wire,
)

U32 = 2**32 - 1
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
nonempty_texts = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=24)
stream_ids = st.integers(1, U32)
u32s = st.integers(0, U32)
json_ints = st.integers(-(2**53), 2**53)
codes = st.integers(0, 0xFFFF).map(error_code_from_wire)
json_scalars = st.one_of(st.none(), st.booleans(), json_ints, texts)

offsets = st.builds(StreamOffsets, st.integers(0, 2**40), st.integers(0, 2**40), st.booleans())
received_maps = st.dictionaries(stream_ids, offsets, max_size=3)
resumes = st.builds(ResumeRequest, texts, texts, received_maps)
hellos = st.builds(
    Hello,
    token=texts,
    client=texts,
    window=st.none() | st.integers(MIN_WINDOW_SIZE, MAX_WINDOW_SIZE),
    resume=st.none() | resumes,
)
welcomes = st.builds(
    Welcome,
    session_id=texts,
    protocol=texts,
    resumed=st.booleans(),
    max_streams=st.integers(1, U32),
    window=st.integers(MIN_WINDOW_SIZE, MAX_WINDOW_SIZE),
    max_frame=st.integers(1, U32),
    heartbeat_ms=st.integers(1, U32),
    server=texts,
    resume_token=st.none() | texts,
    orphan_ttl_ms=st.none() | st.integers(0, 2**40),
    received=st.none() | received_maps,
)
bind_results = st.builds(
    BindResult,
    req_id=json_ints,
    bind_id=u32s,
    kind=st.sampled_from(BindKind),
    port=st.integers(1, 65535),
    mode=st.sampled_from(BindMode),
)

frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(HelloFrame, hellos),
    st.builds(WelcomeFrame, welcomes),
    st.builds(BindFrame, json_ints, json_scalars, json_scalars, json_scalars),
    st.builds(BindOkFrame, bind_results),
    st.builds(BindErrFrame, json_ints, codes, texts),
    st.builds(UnbindFrame, u32s),
    st.builds(OpenFrame, stream_ids, u32s, st.none() | nonempty_texts),
    st.builds(OpenOkFrame, stream_ids),
    st.builds(DataFrame, stream_ids, st.binary(max_size=64), st.booleans()),
    st.builds(WindowFrame, stream_ids, st.integers(1, U32)),
    st.builds(RstFrame, stream_ids, codes, texts),
    st.builds(PingFrame, st.binary(min_size=8, max_size=8)),
    st.builds(PongFrame, st.binary(min_size=8, max_size=8)),
    st.builds(GoAwayFrame, codes, texts),
)
