"""Which pictures of an H.264 stream each picture may predict from, read from the slice headers (no decoding).

A clip reader seeks to the keyframe before a clip and decodes forward. Every picture a wanted frame depends on,
directly or through others, must be decoded exactly; the others need not be. Non-reference pictures are left out
by the decoder itself (FFmpeg's skip_frame). This module finds the *reference* pictures whose only users are
non-reference pictures: when every user lies before the wanted frames, no wanted frame depends on the picture.
These are the middle B-frames of a B-pyramid when the P-frames predict from one picture only (x264's faster
presets, such as veryfast: a quarter of all pictures) or may not use B-frames (a strict pyramid). With several
references per P-frame (x264's medium preset) a P-frame may use any of them, and nothing is left out.

Such a picture cannot just be left out: the decoder would see a hole in frame_num, fill it with a made-up
picture of a made-up display time, and the lists of the pictures that follow would change. Instead the reader
feeds it with its slice data cut off (`headers_only`): the decoder parses the full slice header and keeps its
books (display time, frame_num, reference marking) exactly as in a full decode. The picture's content, which
nothing wanted reads, is then FFmpeg's concealment of a lost picture: about half the cost of decoding the picture
at 1280x720, two thirds at 340x256.

"Users" are found as the standard defines the reference picture lists (ITU-T H.264 8.2.4): a picture's users are
the pictures whose slices have it among their first num_ref_idx_active entries of list 0 or 1, after the list
modifications, with the decoded reference picture marking (sliding window and memory management operations)
followed picture by picture. Only what is certain is reported. A stream that uses what is not modelled here (field
pictures, picture order count type 1, long-term references, memory management operations other than 1, slice
groups, redundant pictures, gaps in frame_num, keyframes that are not IDR pictures, MVC/SVC, a packet with more
than one picture, missing or unreadable parameter sets) gets no disposable pictures: every reference picture is
then decoded in full.

Streams are as MP4, MOV and MKV keep them ("avcC": NAL units with a length prefix, parameter sets in the
codec's extradata, possibly repeated in-band).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

MAX_HEADER_BYTES = 256  # a picture whose slice headers are longer (huge weight tables) is never cut
_HEADER_BYTES_READ = 4096  # of a slice NAL, to follow a header longer than MAX_HEADER_BYTES
_SLICE_NALS = (1, 5)  # coded slice of a non-IDR / IDR picture
_SPS, _PPS = 7, 8
_UNSUPPORTED_NALS = (2, 3, 4, 14, 15, 20, 21)  # data partitioning, SVC/MVC prefix, subset SPS and extension slices
_P, _B, _I, _SP, _SI = range(5)
_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)  # SPS with chroma/scaling fields


class Unsupported(ValueError):
    """The stream uses something the model here does not follow: no picture of it is reported disposable."""


class _HeaderCut(Unsupported):
    """The bytes end inside a header."""


class _Bits:
    """MSB-first reader of an RBSP (the emulation-prevention bytes removed)."""

    def __init__(self, rbsp: bytes):
        self.size = len(rbsp) * 8
        self.value = int.from_bytes(rbsp, "big")
        self.pos = 0

    def u(self, n: int) -> int:
        if self.pos + n > self.size:
            raise _HeaderCut("the data ends inside a header")
        self.pos += n
        return (self.value >> (self.size - self.pos)) & ((1 << n) - 1)

    def ue(self) -> int:
        left = self.size - self.pos
        rest = self.value & ((1 << left) - 1)
        zeros = left - rest.bit_length()
        if rest == 0:
            raise _HeaderCut("the data ends inside a header")
        if zeros > 31:
            raise Unsupported("bad Exp-Golomb code")
        self.pos += zeros
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """The NAL unit's payload after its one-byte header, without emulation-prevention bytes and, as FFmpeg reads
    it, without trailing zero bytes."""
    return bytes(nal[1:]).replace(b"\x00\x00\x03", b"\x00\x00").rstrip(b"\x00")


@dataclass(frozen=True)
class _Sps:
    chroma_array_type: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    max_num_ref_frames: int
    gaps_allowed: bool
    frame_mbs_only: bool
    separate_colour_plane: bool


@dataclass(frozen=True)
class _Pps:
    sps_id: int
    entropy_coding: bool  # CABAC
    bottom_field_pic_order_in_frame_present: bool
    num_ref_idx_default: tuple[int, int]
    weighted_pred: bool
    weighted_bipred_idc: int
    deblocking_filter_control_present: bool
    redundant_pic_cnt_present: bool


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last, following = 8, 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last


def _parse_sps(nal: bytes) -> tuple[int, _Sps]:
    bits = _Bits(_rbsp(nal))
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, level_idc
    sps_id = bits.ue()
    chroma_format_idc, separate = 1, False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            separate = bool(bits.u(1))
        bits.ue(), bits.ue(), bits.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    log2_max_frame_num = bits.ue() + 4
    poc_type = bits.ue()
    log2_max_poc_lsb = 4
    if poc_type == 0:
        log2_max_poc_lsb = bits.ue() + 4
    elif poc_type != 2:
        raise Unsupported(f"picture order count type {poc_type}")
    if log2_max_frame_num > 16 or log2_max_poc_lsb > 16:  # the standard's limits; more is a damaged SPS
        raise Unsupported("bad sequence parameter set")
    max_num_ref_frames = bits.ue()
    gaps_allowed = bool(bits.u(1))
    bits.ue(), bits.ue()  # picture size in macroblocks
    frame_mbs_only = bool(bits.u(1))
    return sps_id, _Sps(0 if separate else chroma_format_idc, log2_max_frame_num, poc_type, log2_max_poc_lsb,
                        max_num_ref_frames, gaps_allowed, frame_mbs_only, separate)


def _parse_pps(nal: bytes) -> tuple[int, _Pps]:
    bits = _Bits(_rbsp(nal))
    pps_id, sps_id = bits.ue(), bits.ue()
    entropy_coding, bottom_present = bool(bits.u(1)), bool(bits.u(1))
    if bits.ue():
        raise Unsupported("slice groups")
    num_ref_idx_default = (bits.ue() + 1, bits.ue() + 1)
    weighted_pred, weighted_bipred_idc = bool(bits.u(1)), bits.u(2)
    bits.se(), bits.se(), bits.se()  # pic_init_qp, pic_init_qs, chroma_qp_index_offset
    deblocking_present = bool(bits.u(1))
    bits.u(1)  # constrained_intra_pred_flag
    redundant_present = bool(bits.u(1))
    return pps_id, _Pps(sps_id, entropy_coding, bottom_present, num_ref_idx_default, weighted_pred,
                        weighted_bipred_idc, deblocking_present, redundant_present)


@dataclass
class _Slice:
    """What the reference bookkeeping needs from one slice header."""

    nal_ref_idc: int
    idr: bool
    slice_type: int
    frame_num: int
    poc_lsb: int = 0
    delta_poc_bottom: int = 0
    num_ref_idx: tuple[int, int] = (0, 0)
    modifications: tuple[list, list] = field(default_factory=lambda: ([], []))
    mmcos: list | None = None  # None: sliding window; else difference_of_pic_nums_minus1 of each operation 1
    header_bytes: int | None = None  # bytes of the NAL up to the end of the header (None: over MAX_HEADER_BYTES)


def _parse_modifications(bits: _Bits) -> list:
    ops = []
    if bits.u(1):
        while (idc := bits.ue()) != 3:
            if idc > 5:
                raise Unsupported("bad reference list modification")
            ops.append((idc, bits.ue()))
    return ops


def _skip_pred_weight_table(bits: _Bits, sps: _Sps, num_ref_idx: tuple[int, int], lists: int) -> None:
    bits.ue()
    if sps.chroma_array_type:
        bits.ue()
    for lst in range(lists):
        for _ in range(num_ref_idx[lst]):
            if bits.u(1):
                bits.se(), bits.se()
            if sps.chroma_array_type and bits.u(1):
                bits.se(), bits.se(), bits.se(), bits.se()


def _parse_marking(bits: _Bits, header: _Slice) -> None:
    if header.idr:
        bits.u(1)  # no_output_of_prior_pics_flag
        if bits.u(1):
            raise Unsupported("long-term reference pictures")
    elif bits.u(1):  # adaptive_ref_pic_marking_mode_flag
        header.mmcos = []
        while (op := bits.ue()) != 0:
            if op != 1:  # 2, 3, 4, 6: long-term pictures; 5: everything unmarked and the clocks reset
                raise Unsupported(f"memory management operation {op}")
            header.mmcos.append(bits.ue())


def _parse_slice(nal: bytes, sps_table: dict, pps_table: dict) -> tuple[_Slice, _Sps]:
    """The slice header, read to its end (what the decoder parses before any macroblock), and how many bytes of
    the NAL hold it."""
    try:
        header, sps, bits = _read_slice(nal[:MAX_HEADER_BYTES], nal[0], sps_table, pps_table)
    except _HeaderCut:
        return _read_slice(nal[:_HEADER_BYTES_READ], nal[0], sps_table, pps_table)[:2]
    # The shortest cut whose payload, read as the decoder reads it (trailing zero bytes dropped), holds every bit
    header.header_bytes = next((size for size in range(2 + (bits.pos - 1) // 8, MAX_HEADER_BYTES + 1)
                                if len(_rbsp(nal[:size])) * 8 >= bits.pos), None)
    return header, sps


def _read_slice(nal: bytes, nal_header: int, sps_table: dict, pps_table: dict) -> tuple[_Slice, _Sps, _Bits]:
    bits = _Bits(_rbsp(nal))
    bits.ue()  # first_mb_in_slice
    slice_type, pps_id = bits.ue(), bits.ue()
    if slice_type > 9:
        raise Unsupported("bad slice header")
    slice_type %= 5
    if pps_id not in pps_table or pps_table[pps_id].sps_id not in sps_table:
        raise Unsupported("a slice refers to a parameter set the stream does not hold")
    pps = pps_table[pps_id]
    sps = sps_table[pps.sps_id]
    header = _read_header(bits, _Slice((nal_header >> 5) & 3, nal_header & 31 == 5, slice_type, 0), sps, pps)
    return header, sps, bits


def _read_header(bits: _Bits, header: _Slice, sps: _Sps, pps: _Pps) -> _Slice:
    if sps.separate_colour_plane:
        bits.u(2)
    header.frame_num = bits.u(sps.log2_max_frame_num)
    if not sps.frame_mbs_only and bits.u(1):
        raise Unsupported("field pictures")
    if header.idr:
        bits.ue()  # idr_pic_id
    if sps.poc_type == 0:
        header.poc_lsb = bits.u(sps.log2_max_poc_lsb)
        if pps.bottom_field_pic_order_in_frame_present:
            header.delta_poc_bottom = bits.se()
    if pps.redundant_pic_cnt_present and bits.ue():
        raise Unsupported("redundant pictures")
    kind = header.slice_type
    if kind == _B:
        bits.u(1)  # direct_spatial_mv_pred_flag
    if kind in (_P, _SP, _B):
        num = list(pps.num_ref_idx_default)
        if bits.u(1):  # num_ref_idx_active_override_flag
            num[0] = bits.ue() + 1
            if kind == _B:
                num[1] = bits.ue() + 1
        header.num_ref_idx = (num[0], num[1] if kind == _B else 0)
        if max(header.num_ref_idx) > 32:  # the standard's limit: the decoder refuses the slice
            raise Unsupported("bad slice header")
        header.modifications = (_parse_modifications(bits), _parse_modifications(bits) if kind == _B else [])
    if (pps.weighted_pred and kind in (_P, _SP)) or (pps.weighted_bipred_idc == 1 and kind == _B):
        _skip_pred_weight_table(bits, sps, header.num_ref_idx, 2 if kind == _B else 1)
    if header.nal_ref_idc:
        _parse_marking(bits, header)
    if pps.entropy_coding and kind not in (_I, _SI):
        bits.ue()  # cabac_init_idc
    bits.se()  # slice_qp_delta
    if kind in (_SP, _SI):
        if kind == _SP:
            bits.u(1)
        bits.se()
    if pps.deblocking_filter_control_present and bits.ue() != 1:
        bits.se(), bits.se()
    return header


@dataclass
class _Picture:
    """One decoded picture as the reference bookkeeping sees it."""

    key: Hashable
    index: int  # decoding order
    is_reference: bool
    frame_num: int = 0
    poc: int = 0
    uses: set = field(default_factory=set)  # decoding indices of the pictures its slices may predict from
    header_bytes: int | None = 0  # the most of its slices' `header_bytes`


class _Dpb:
    """The reference pictures (8.2.5), the picture order count state (8.2.1) and the lists (8.2.4)."""

    def __init__(self):
        self.refs: list[_Picture] = []  # marked "used for short-term reference" (long-term ones are not followed)
        self.prev_ref_frame_num = 0
        self.prev_poc_msb = self.prev_poc_lsb = 0  # POC type 0: of the previous reference picture
        self.prev_frame_num = self.prev_frame_num_offset = 0  # POC type 2: of the previous picture
        self._msb = self._frame_num_offset = 0  # of the current picture

    def picture_order_count(self, header: _Slice, sps: _Sps) -> int:
        """PicOrderCnt of the current frame (8.2.1.1, 8.2.1.3)."""
        if sps.poc_type == 0:
            if header.idr:
                self.prev_poc_msb = self.prev_poc_lsb = 0
            half = 1 << (sps.log2_max_poc_lsb - 1)
            self._msb = self.prev_poc_msb
            if header.poc_lsb < self.prev_poc_lsb and self.prev_poc_lsb - header.poc_lsb >= half:
                self._msb += 2 * half
            elif header.poc_lsb > self.prev_poc_lsb and header.poc_lsb - self.prev_poc_lsb > half:
                self._msb -= 2 * half
            top = self._msb + header.poc_lsb
            return min(top, top + header.delta_poc_bottom)
        if header.idr:
            self._frame_num_offset = 0
            return 0
        self._frame_num_offset = self.prev_frame_num_offset + (
            1 << sps.log2_max_frame_num if self.prev_frame_num > header.frame_num else 0)
        return 2 * (self._frame_num_offset + header.frame_num) - (0 if header.nal_ref_idc else 1)

    def lists(self, header: _Slice, sps: _Sps, poc: int) -> list[_Picture]:
        """The pictures in the active part of the slice's lists (8.2.4.2, 8.2.4.3)."""
        max_frame_num = 1 << sps.log2_max_frame_num

        def pic_num(p: _Picture) -> int:  # FrameNumWrap
            return p.frame_num - max_frame_num if p.frame_num > header.frame_num else p.frame_num

        if header.slice_type in (_P, _SP):
            initial = [sorted(self.refs, key=pic_num, reverse=True)]
        elif header.slice_type == _B:
            before = sorted((p for p in self.refs if p.poc < poc), key=lambda p: p.poc, reverse=True)
            after = sorted((p for p in self.refs if p.poc > poc), key=lambda p: p.poc)
            list0, list1 = before + after, after + before
            if len(list1) > 1 and list1 == list0:
                list1[0], list1[1] = list1[1], list1[0]
            initial = [list0, list1]
        else:
            return []
        used = []
        for lst, ops, n in zip(initial, header.modifications, header.num_ref_idx):
            used += _modified(lst[:n], ops, n, header.frame_num, max_frame_num, self.refs, pic_num)
        return used

    def mark(self, picture: _Picture, header: _Slice, sps: _Sps) -> None:
        """Decoded reference picture marking (8.2.5) after `picture`, and the state the next picture starts from."""
        if header.idr:
            self.refs = []
        elif header.nal_ref_idc and header.mmcos is not None:
            self._memory_management(header, sps)
        elif header.nal_ref_idc:
            self._sliding_window(header, sps)
        if header.nal_ref_idc:
            self.refs.append(picture)
            self.prev_ref_frame_num = header.frame_num
            self.prev_poc_msb, self.prev_poc_lsb = self._msb, header.poc_lsb
        self.prev_frame_num, self.prev_frame_num_offset = header.frame_num, self._frame_num_offset

    def _sliding_window(self, header: _Slice, sps: _Sps) -> None:
        if self.refs and len(self.refs) >= max(sps.max_num_ref_frames, 1):
            max_frame_num = 1 << sps.log2_max_frame_num
            self.refs.remove(min(self.refs, key=lambda p: p.frame_num - max_frame_num
                                 if p.frame_num > header.frame_num else p.frame_num))

    def _memory_management(self, header: _Slice, sps: _Sps) -> None:
        """The slice's memory management operations 1 (8.2.5.4.1): a short-term picture is no longer a reference."""
        max_frame_num = 1 << sps.log2_max_frame_num
        for difference_minus1 in header.mmcos:
            pic_num = header.frame_num - (difference_minus1 + 1)
            target = next((p for p in self.refs if pic_num == (
                p.frame_num - max_frame_num if p.frame_num > header.frame_num else p.frame_num)), None)
            if target is None:
                raise Unsupported("a memory management operation names no reference picture")
            self.refs.remove(target)


def _modified(lst: list, ops: list, n: int, frame_num: int, max_frame_num: int, refs: list, pic_num) -> list:
    """The active part (`n` entries) of a list after its modification operations (8.2.4.3), given its initial
    active part `lst`."""
    pred = frame_num
    for idx, (idc, value) in enumerate(ops):
        if idc in (0, 1):
            no_wrap = pred - (value + 1) if idc == 0 else pred + (value + 1)
            if no_wrap < 0:
                no_wrap += max_frame_num
            elif no_wrap >= max_frame_num:
                no_wrap -= max_frame_num
            pred = no_wrap
            wanted = no_wrap - max_frame_num if no_wrap > frame_num else no_wrap
            target = next((p for p in refs if pic_num(p) == wanted), None)
        else:  # 2: a long-term picture (never marked here), 4 and 5: views of MVC
            raise Unsupported(f"reference list modification {idc}")
        if target is None or idx >= n:
            raise Unsupported("a list modification names no reference picture")
        lst = lst[:idx] + [target] + [p for p in lst[idx:] if p is not target]
    return lst[:n]


def nal_length_size(extradata: bytes | None) -> int | None:
    """Bytes of the length prefix of each NAL unit of an avcC stream (from its extradata); None for another
    layout (Annex B start codes) or no extradata."""
    if not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


def _avcc_parameter_sets(extradata: bytes) -> Iterator[bytes]:
    """The SPS and PPS NAL units of an avcC record."""
    pos = 6
    for count_mask in (0x1F, 0xFF):
        count = extradata[pos - 1] & count_mask
        for _ in range(count):
            size = int.from_bytes(extradata[pos:pos + 2], "big")
            yield extradata[pos + 2:pos + 2 + size]
            pos += 2 + size
        pos += 1


def split_nals(data: bytes, length_size: int) -> Iterator[bytes]:
    """The NAL units of one avcC packet."""
    pos, end = 0, len(data)
    while pos + length_size <= end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        yield data[pos + length_size:pos + length_size + size]
        pos += length_size + size


def headers_only(data: bytes, length_size: int, header_bytes: int) -> bytes:
    """An avcC packet with each slice NAL cut to its first `header_bytes` bytes (other NAL units kept)."""
    out = []
    for nal in split_nals(data, length_size):
        if nal and nal[0] & 31 in _SLICE_NALS:
            nal = nal[:header_bytes]
        out += [len(nal).to_bytes(length_size, "big"), nal]
    return b"".join(out)


@dataclass(frozen=True)
class Disposable:
    """A reference picture that only non-reference pictures use."""

    users: list  # keys of the pictures whose lists hold it
    header_bytes: int  # of each of its slice NALs, what `headers_only` must keep


class ReferenceTracker:
    """Follows the reference pictures of an avcC H.264 stream, packet by packet in decoding order, and tells which
    reference pictures only non-reference pictures use (`disposable`).

    Args:
        extradata: the stream's avcC record (its parameter sets).
    """

    def __init__(self, extradata: bytes):
        self.length_size = nal_length_size(extradata)
        self.sps: dict[int, _Sps] = {}
        self.pps: dict[int, _Pps] = {}
        self.pictures: list[_Picture] = []
        self.dpb = _Dpb()
        self.failure = "" if self.length_size else "not an avcC stream"
        if self.length_size:
            self._guard(lambda: [self._parameter_set(nal) for nal in _avcc_parameter_sets(extradata)])

    def add(self, data: bytes, key: Hashable, *, keyframe: bool) -> None:
        """One packet in decoding order; `key` names it in `disposable`; `keyframe`: the container lists it as a
        place to start decoding."""
        if not self.failure:
            self._guard(lambda: self._add(data, key, keyframe))

    def disposable(self) -> dict[Hashable, Disposable]:
        """{key of a reference picture: its users and header size}, for the reference pictures that only
        non-reference pictures use and whose slice headers are at most MAX_HEADER_BYTES long; {} when the stream is
        not followed (`failure` says why)."""
        if self.failure:
            return {}
        users: dict[int, list[_Picture]] = {p.index: [] for p in self.pictures if p.is_reference}
        for picture in self.pictures:
            for index in picture.uses:
                users[index].append(picture)
        return {self.pictures[index].key: Disposable([u.key for u in found], self.pictures[index].header_bytes)
                for index, found in users.items()
                if self.pictures[index].header_bytes and not any(u.is_reference for u in found)}

    def _guard(self, step) -> None:
        try:
            step()
        except Unsupported as e:
            self.failure = str(e)
        except (IndexError, ValueError) as e:  # malformed data (a damaged file): the decoder will conceal it
            self.failure = f"unreadable data ({type(e).__name__})"

    def _parameter_set(self, nal: bytes) -> None:
        kind = nal[0] & 31 if nal else 0
        if kind == _SPS:
            sps_id, sps = _parse_sps(nal)
            self.sps[sps_id] = sps
        elif kind == _PPS:
            pps_id, pps = _parse_pps(nal)
            self.pps[pps_id] = pps

    def _add(self, data: bytes, key: Hashable, keyframe: bool) -> None:
        picture, first = None, None
        for nal in split_nals(data, self.length_size):
            kind = nal[0] & 31 if nal else 0
            if kind in (_SPS, _PPS):
                self._parameter_set(nal)
            elif kind in _UNSUPPORTED_NALS:
                raise Unsupported(f"NAL unit type {kind}")
            elif kind in _SLICE_NALS:
                header, sps = _parse_slice(nal, self.sps, self.pps)
                if picture is None:
                    picture, first = self._start(header, sps, key, keyframe), (header, sps)
                elif (header.frame_num, header.poc_lsb, header.idr, bool(header.nal_ref_idc)) != (
                        first[0].frame_num, first[0].poc_lsb, first[0].idr, bool(first[0].nal_ref_idc)):
                    raise Unsupported("a packet with more than one picture")
                picture.uses.update(p.index for p in self.dpb.lists(header, sps, picture.poc))
                picture.header_bytes = (None if None in (picture.header_bytes, header.header_bytes)
                                        else max(picture.header_bytes, header.header_bytes))
        if picture is not None:
            self.dpb.mark(picture, *first)
            self.pictures.append(picture)

    def _start(self, header: _Slice, sps: _Sps, key: Hashable, keyframe: bool) -> _Picture:
        if keyframe and not header.idr:
            raise Unsupported("a keyframe that is not an IDR picture")
        if not header.idr and header.frame_num not in (
                self.dpb.prev_ref_frame_num, (self.dpb.prev_ref_frame_num + 1) % (1 << sps.log2_max_frame_num)):
            raise Unsupported("a gap in frame_num")
        poc = self.dpb.picture_order_count(header, sps)
        return _Picture(key, len(self.pictures), bool(header.nal_ref_idc), header.frame_num, poc)
