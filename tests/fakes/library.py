"""Seeded generator of a Stash library plus the StashDB data that matches it.

``generate_library(...)`` returns a :class:`Library` whose ``world`` is a
fake-Stash :class:`~tests.fakes.fake_stash.World` and whose ``stashdb`` is a
plain dict for a fake StashDB server::

    {"scenes": {"<uuid>": {"id": "<uuid>", "title": str, "deleted": bool,
                           "tags": [{"id", "name", "aliases", "deleted"}],
                           "fingerprints": [{"algorithm": "OSHASH"|"PHASH"|"MD5",
                                             "hash": str, "duration": int}]}},
     "tags": {"<uuid>": tag dict}}   # every StashDB tag, used or not

Tag dicts are shared between StashDB scenes (one object per StashDB tag; the
whole pool is ``Library.stashdb_tags``).

Scene correspondence (see ``Library.scene_kind``):
  normal      linked to a StashDB scene whose fingerprints equal the local ones
  fallback    linked, but StashDB knows none of the local fingerprints
  wrong_hit   linked, StashDB's own scene has foreign fingerprints and the local
              oshash+phash are known on StashDB for a DIFFERENT (decoy) scene
  deleted     linked to a StashDB scene marked deleted (fingerprints match)
  missing     linked to an id that does not exist on StashDB
  unlinked_known  no stash id; a StashDB scene has the local fingerprints
  unlinked    no stash id and unknown to StashDB

Tag correspondence (see ``Library.tag_kind`` / ``Library.tag_matches``):
  link        StashDB tag id is a local tag's stash id; its StashDB name differs
  link_clash  as link, and the StashDB name equals ANOTHER local tag's name
  name_case   StashDB name equals a local name in different ASCII case
  alias       StashDB name equals a local tag's alias
  shared_alias / dup_name / name_vs_alias   collisions between two local tags
  unmatched   nothing local corresponds
A few StashDB tags of every kind may be ``deleted``.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass, field

from tests.fakes.fake_stash import World

OTHER_ENDPOINT = "https://fansdb.cc/graphql"
MATCHED_KINDS = ("normal", "fallback", "wrong_hit")  # linked scenes whose StashDB scene the sync finds

_ADJ = ("Red", "Blue", "Green", "Golden", "Silver", "Dark", "Bright", "Quiet", "Loud",
        "Rainy", "Sunny", "Misty", "Urban", "Rural", "Vintage", "Modern", "Classic",
        "Retro", "Tiny", "Giant", "Rapid", "Slow", "Warm", "Cold", "Frozen", "Wild",
        "Calm", "Hidden", "Open", "Narrow", "Wide", "Soft", "Rough", "Smooth", "Early",
        "Late", "Night", "Morning", "Evening", "Coastal", "Desert", "Alpine", "Tropical",
        "Northern", "Southern", "Eastern", "Western", "Candid", "Formal", "Casual")
_NOUN = ("Beach", "Kitchen", "Garden", "Library", "Office", "Forest", "River", "Bridge",
         "Harbor", "Market", "Studio", "Balcony", "Rooftop", "Cabin", "Castle", "Train",
         "Airport", "Museum", "Theater", "Stadium", "Village", "Island", "Canyon",
         "Meadow", "Lake", "Pool", "Garage", "Workshop", "Cafe", "Bakery", "Gallery",
         "Hallway", "Staircase", "Attic", "Cellar", "Tower", "Lighthouse", "Vineyard",
         "Orchard", "Farm", "Dock", "Pier", "Plaza", "Alley", "Tunnel", "Lobby",
         "Terrace", "Courtyard", "Greenhouse", "Observatory", "Interview", "Dance",
         "Cooking", "Painting", "Hiking", "Cycling", "Camping", "Sailing", "Skiing")
_FIRST = ("Alex", "Jamie", "Robin", "Casey", "Morgan", "Taylor", "Jordan", "Riley",
          "Avery", "Quinn", "Sasha", "Dana", "Kim", "Lee", "Noa", "Eden", "Sky", "Rory",
          "Jules", "Remy", "Blair", "Drew", "Elliot", "Finley", "Harper", "Indy")
_LAST = ("Stone", "Rivers", "Brooks", "Hill", "Woods", "Lake", "Fields", "Marsh", "Vale",
         "Cross", "North", "West", "Frost", "Hart", "Knight", "Lane", "Moss", "Park",
         "Reed", "Shaw", "Stark", "Wells", "Young", "Gray", "Black", "Snow")
_GENDERS = ("FEMALE", "MALE", "FEMALE", "TRANSGENDER_FEMALE", "NON_BINARY",
            "FEMALE", "MALE", "TRANSGENDER_MALE", "INTERSEX")

_BASE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
_YEAR = 365 * 86400


@dataclass
class Library:
    world: World
    stashdb: dict
    endpoint: str
    seed: int
    # StashDB tag pool: uuid -> tag dict (the same objects the scenes use)
    stashdb_tags: dict = field(default_factory=dict)
    # local scene id -> kind (see module doc)
    scene_kind: dict = field(default_factory=dict)
    # local scene id -> StashDB uuid it is linked to (for `endpoint`)
    scene_link: dict = field(default_factory=dict)
    # local scene id -> decoy StashDB uuid holding its fingerprints (wrong_hit)
    decoy: dict = field(default_factory=dict)
    # unlinked_known local scene id -> StashDB uuid with its fingerprints
    fingerprint_match: dict = field(default_factory=dict)
    # StashDB tag uuid -> kind (see module doc)
    tag_kind: dict = field(default_factory=dict)
    # StashDB tag uuid -> {"link": [local ids], "name": [...], "alias": [...]}
    # computed from the final local tags (case-insensitive, ids ascending)
    tag_matches: dict = field(default_factory=dict)

    def scenes_of_kind(self, kind: str) -> list[int]:
        return sorted(i for i, k in self.scene_kind.items() if k == kind)

    def expected_tag_additions(self, before, blacklisted=lambda name: False) -> dict[int, set[int]]:
        """The oracle of the scene tag sync, from the generator's own bookkeeping: the local tags
        each linked scene must gain (StashID link, then name, then alias, lowest id), given the
        scenes' tag ids ``before`` and a predicate for blacklisted tag names."""
        expected = {}
        for sid, kind in self.scene_kind.items():
            if kind not in MATCHED_KINDS:
                continue
            gain = set()
            for tag in self.stashdb["scenes"][self.scene_link[sid]]["tags"]:
                matches = self.tag_matches[tag["id"]]
                candidates = matches["link"] or matches["name"] or matches["alias"]
                if tag["deleted"] or not candidates or blacklisted(tag["name"]):
                    continue
                if not blacklisted(self.world.get("tag", min(candidates))["name"]):
                    gain.add(min(candidates))
            if gain - set(before[sid]):
                expected[sid] = gain - set(before[sid])
        return expected


class _Names:
    """Unique (case-insensitive) title-case names, deterministic per rng."""

    def __init__(self, rng: random.Random):
        combos = [f"{a} {n}" for a in _ADJ for n in _NOUN]
        rng.shuffle(combos)
        self._combos = combos
        self._i = 0
        self.used: set[str] = set()

    def take(self) -> str:
        while True:
            i = self._i
            self._i += 1
            base = self._combos[i % len(self._combos)]
            name = base if i < len(self._combos) else f"{base} {i // len(self._combos) + 1}"
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID string from the seeded rng (fast, no uuid module)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _ts_renderer(offset_seconds: int):
    if offset_seconds == 0:
        suffix = "Z"
    else:
        sign = "-" if offset_seconds < 0 else "+"
        a = abs(offset_seconds)
        suffix = f"{sign}{a // 3600:02d}:{a % 3600 // 60:02d}"
    days: dict[int, str] = {}

    def render(epoch: int) -> str:
        d, s = divmod(epoch + offset_seconds, 86400)
        prefix = days.get(d)
        if prefix is None:
            prefix = days[d] = time.strftime("%Y-%m-%dT", time.gmtime(d * 86400))
        return f"{prefix}{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}{suffix}"
    return render


def _count(fraction: float, total: int) -> int:
    if fraction <= 0 or total <= 0:
        return 0
    return min(total, max(1, round(fraction * total)))


def generate_library(seed=1, scenes=200, tags=60, performers=40, studios=10, groups=8,
                     galleries=20, images=100, linked_fraction=0.9,
                     fallback_fraction=0.02, wrong_hit_fraction=0.01,
                     endpoint="https://stashdb.org/graphql", deleted_fraction=0.01,
                     missing_fraction=0.01, unlinked_known_fraction=0.5,
                     utc_offset_seconds=0, clock=None) -> Library:
    """Build a deterministic library for ``seed``.

    Timestamps of generated rows lie in 2024 (rendered in
    ``utc_offset_seconds``); about 5% of scenes share their updated_at with the
    previous scene. ``clock`` is installed as ``world.clock`` (default: real
    time) and is used only for later writes.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small acyclic objects: collections only cost time
    try:
        lib = _generate(seed, scenes, tags, performers, studios, groups, galleries,
                        images, linked_fraction, fallback_fraction, wrong_hit_fraction,
                        endpoint, deleted_fraction, missing_fraction,
                        unlinked_known_fraction, utc_offset_seconds, clock)
    finally:
        if gc_was_enabled:
            gc.enable()
    if scenes + images > 50_000:
        gc.freeze()  # keep later collections from rescanning the big library
    return lib


def _generate(seed, scenes, tags, performers, studios, groups, galleries, images,
              linked_fraction, fallback_fraction, wrong_hit_fraction, endpoint,
              deleted_fraction, missing_fraction, unlinked_known_fraction,
              utc_offset_seconds, clock):
    E = ()  # shared empty list value (the world never mutates lists in place)
    rng = random.Random(seed)
    world = World(clock=clock)
    render = _ts_renderer(utc_offset_seconds)
    lib = Library(world=world, stashdb={"scenes": {}}, endpoint=endpoint, seed=seed)
    world.stash_boxes = [{"endpoint": endpoint, "api_key": "fake-stashdb-api-key",
                          "name": "StashDB", "max_requests_per_minute": 240}]
    names = _Names(rng)
    rnd, getbits = rng.random, rng.getrandbits

    def randint(a, b):  # much faster than Random.randint, still seeded
        return a + int(rnd() * (b - a + 1))

    def pick(n, k):
        """k distinct ids out of 1..n, in random order."""
        k = min(n, k)
        if k <= 0:
            return E
        if 2 * k > n:
            return rng.sample(range(1, n + 1), k)
        out = []
        while len(out) < k:
            x = 1 + int(rnd() * n)
            if x not in out:
                out.append(x)
        return out

    def bank(n, kmax, size=4096):
        """Pre-drawn id tuples (1..n, 0..kmax distinct ids); drawing a row's
        links from a bank is much cheaper than sampling per row."""
        return [tuple(pick(n, randint(0, kmax))) for _ in range(size)]

    def from_bank(b):
        return b[int(rnd() * 4096)]

    dates = [f"{randint(2005, 2024)}-{randint(1, 12):02d}-{randint(1, 28):02d}"
             for _ in range(997)]

    def pick_date():
        return dates[int(rnd() * 997)]

    # A sorted pool of rendered instants in 2024; entities draw created_at and
    # a later-or-equal updated_at from it (rendering per row is too slow for
    # 300k rows, and shared seconds are realistic: a scan creates many rows
    # per second).
    n_pool = max(1000, min(100_000, scenes + images))
    ts = sorted(_BASE_EPOCH + int(rnd() * _YEAR) for _ in range(n_pool))
    ts_pool = [render(e) for e in ts]
    near = max(1, n_pool // 6)  # updated_at at most ~2 months after created_at

    def stamp_idx(p_update=0.7):
        i = int(rnd() * n_pool)
        j = i + int(rnd() * near) if rnd() < p_update else i
        return i, (j if j < n_pool else n_pool - 1)

    def stamps():
        i, j = stamp_idx()
        return ts_pool[i], ts_pool[j]

    file_id = 1
    folder_id = 1

    # ------------------------------------------------------------ tags
    tag_rows = {}
    for tid in range(1, tags + 1):
        c, u = stamps()
        tag_rows[tid] = {
            "id": tid, "name": names.take(), "sort_name": None,
            "description": f"Description of tag {tid}" if rnd() < 0.3 else None,
            "aliases": [], "ignore_auto_tag": rnd() < 0.05, "favorite": rnd() < 0.1,
            "stash_ids": [], "parent_ids": [], "created_at": c, "updated_at": u}
    for tid in range(2, tags + 1):
        if rnd() < 0.1:
            tag_rows[tid]["parent_ids"] = [randint(1, tid - 1)]
    order = list(range(1, tags + 1))
    rng.shuffle(order)
    n_link, n_case, n_alias = round(0.3 * tags), round(0.15 * tags), round(0.1 * tags)
    g_link = order[:n_link]
    g_case = order[n_link:n_link + n_case]
    g_alias = order[n_link + n_case:n_link + n_case + n_alias]
    rest = order[n_link + n_case + n_alias:]
    for tid in range(1, tags + 1):
        if tid in g_alias or rnd() < 0.3:
            tag_rows[tid]["aliases"] = [names.take().lower() for _ in range(randint(1, 2))]

    sdb_tags = {}  # uuid -> dict
    tag_kind = {}
    tag_target = {}  # uuid -> intended local tag id (None for unmatched)

    def new_sdb_tag(name, kind, target):
        tid = _uuid(rng)
        t = {"id": tid, "name": name,
             "aliases": [names.take() for _ in range(1 if rnd() < 0.3 else 0)],
             "deleted": False}
        sdb_tags[tid] = t
        tag_kind[tid] = kind
        tag_target[tid] = target
        return t

    # collisions between two local tags (ids p < q) come from the unlinked rest
    coll = sorted(rest[-6:]) if len(rest) >= 12 else []
    clash_pool = rest[:-6] if coll else list(rest)
    for k, tid in enumerate(g_link):
        row = tag_rows[tid]
        if k % 2 == 0 and clash_pool:
            other = clash_pool[k // 2 % len(clash_pool)]
            t = new_sdb_tag(tag_rows[other]["name"], "link_clash", tid)
        else:
            t = new_sdb_tag(names.take(), "link", tid)
        row["stash_ids"] = [{"endpoint": endpoint, "stash_id": t["id"],
                             "updated_at": row["updated_at"]}]
        if rnd() < 0.1:  # also linked on another stash-box
            row["stash_ids"].append({"endpoint": OTHER_ENDPOINT, "stash_id": _uuid(rng),
                                     "updated_at": row["updated_at"]})
    for k, tid in enumerate(g_case):
        n = tag_rows[tid]["name"]
        new_sdb_tag(n.lower() if k % 3 == 0 else n.upper() if k % 3 == 1 else n.swapcase(),
                    "name_case", tid)
    for k, tid in enumerate(g_alias):
        a = tag_rows[tid]["aliases"][0]
        new_sdb_tag(a if k % 2 == 0 else a.title(), "alias", tid)
    if coll:
        p, q = coll[0], coll[1]  # shared alias
        x = names.take().lower()
        tag_rows[p]["aliases"] = tag_rows[p]["aliases"] + [x]
        tag_rows[q]["aliases"] = tag_rows[q]["aliases"] + [x.upper()]
        new_sdb_tag(x.title(), "shared_alias", p)
        p, q = coll[2], coll[3]  # duplicate name, different case
        tag_rows[q]["name"] = tag_rows[p]["name"].upper()
        new_sdb_tag(tag_rows[p]["name"].lower(), "dup_name", p)
        p, q = coll[4], coll[5]  # lower id has the higher id's name as alias
        tag_rows[p]["aliases"] = tag_rows[p]["aliases"] + [tag_rows[q]["name"].lower()]
        new_sdb_tag(tag_rows[q]["name"], "name_vs_alias", q)
    for _ in range(max(3, round(0.3 * tags))):
        new_sdb_tag(names.take(), "unmatched", None)
    pool = list(sdb_tags.values())
    for t in rng.sample(pool, _count(0.05, len(pool))):
        t["deleted"] = True
    for tid in sorted(tag_rows):
        world._insert_raw("tag", tag_rows[tid])

    # ------------------------------------------------------------ studios
    for sid in range(1, studios + 1):
        c, u = stamps()
        world._insert_raw("studio", {
            "id": sid, "name": f"{names.take()} Studios", "urls": [],
            "parent_id": randint(1, sid - 1) if sid > 1 and rnd() < 0.3 else None,
            "aliases": [names.take()] if rnd() < 0.2 else [],
            "tag_ids": pick(tags, randint(0, 2)),
            "ignore_auto_tag": False,
            "stash_ids": [{"endpoint": endpoint, "stash_id": _uuid(rng), "updated_at": u}]
            if rnd() < 0.6 else [],
            "rating100": randint(1, 100) if rnd() < 0.3 else None,
            "favorite": rnd() < 0.1, "details": None, "created_at": c, "updated_at": u})

    # ------------------------------------------------------------ performers
    for pid in range(1, performers + 1):
        c, u = stamps()
        world._insert_raw("performer", {
            "id": pid, "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "disambiguation": f"#{pid}" if rnd() < 0.1 else None,
            "urls": [f"https://example.org/performer/{pid}"] if rnd() < 0.5 else [],
            "gender": rng.choice(_GENDERS),
            "birthdate": f"{randint(1970, 2003)}-{randint(1, 12):02d}-{randint(1, 28):02d}"
            if rnd() < 0.7 else None,
            "alias_list": [f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"] if rnd() < 0.3 else [],
            "favorite": rnd() < 0.1,
            "tag_ids": pick(tags, randint(0, 4)),
            "ignore_auto_tag": False,
            "stash_ids": [{"endpoint": endpoint, "stash_id": _uuid(rng), "updated_at": u}]
            if rnd() < 0.6 else [],
            "rating100": randint(1, 100) if rnd() < 0.3 else None,
            "details": None, "created_at": c, "updated_at": u})

    def pick_studio():
        return randint(1, studios) if studios and rnd() < 0.7 else None

    # ------------------------------------------------------------ groups
    for gid in range(1, groups + 1):
        c, u = stamps()
        world._insert_raw("group", {
            "id": gid, "name": f"The {names.take()} Collection",
            "aliases": None, "date": pick_date() if rnd() < 0.7 else None,
            "rating100": None, "studio_id": pick_studio(),
            "director": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}" if rnd() < 0.5 else None,
            "synopsis": None, "urls": [], "tag_ids": pick(tags, randint(0, 3)),
            "created_at": c, "updated_at": u})

    # ------------------------------------------------------------ galleries
    gallery_rows = {}
    for gid in range(1, galleries + 1):
        c, u = stamps()
        if rnd() < 0.7:
            folder = {"id": folder_id, "path": f"/data/galleries/gallery_{gid:05d}"}
            folder_id += 1
            files = []
        else:
            folder = None
            path = f"/data/galleries/gallery_{gid:05d}.zip"
            files = [{"id": file_id, "path": path, "basename": path.rsplit("/", 1)[1],
                      "size": randint(10_000_000, 500_000_000),
                      "fingerprints": [{"type": "md5", "value": f"{getbits(128):032x}"}]}]
            file_id += 1
        row = {"id": gid, "title": f"Gallery {names.take()}", "code": None, "urls": [],
               "date": pick_date(), "details": None, "photographer": None,
               "rating100": None, "organized": rnd() < 0.2, "files": files,
               "folder": folder, "studio_id": randint(1, studios) if studios else None,
               "tag_ids": pick(tags, randint(0, 4)),
               "performer_ids": pick(performers, randint(0, 2)),
               "created_at": c, "updated_at": u}
        gallery_rows[gid] = row
        world._insert_raw("gallery", row)

    # ------------------------------------------------------------ images
    img_tags, img_perfs = bank(tags, 3), bank(performers, 2)
    image_table = world._tables["image"]
    for iid in range(1, images + 1):
        ci = int(rnd() * n_pool)
        ui = ci
        if rnd() < 0.2:
            ui = min(ci + int(rnd() * near), n_pool - 1)
        r = rnd()
        gids = E if r < 0.3 or not galleries else \
            [randint(1, galleries)] if r < 0.9 else pick(galleries, 2)
        inherit = bool(gids) and rnd() < 0.3
        path = f"/data/images/{iid // 1000:03d}/image_{iid:07d}.jpg"
        image_table[iid] = ({
            "id": iid, "title": None if rnd() < 0.5 else f"Image {iid}", "code": None,
            "rating100": None, "urls": E,
            "date": None if inherit or rnd() < 0.5 else pick_date(),
            "details": None, "photographer": None, "organized": False,
            "files": ({"id": file_id, "path": path, "basename": path[-17:],
                       "size": 100_000 + iid % 4_000_000, "format": "jpeg",
                       "width": 1200, "height": 800, "fingerprints": E},),
            "gallery_ids": gids,
            "studio_id": None if inherit or rnd() < 0.5 else pick_studio(),
            "tag_ids": from_bank(img_tags) if rnd() < 0.5 else E,
            "performer_ids": from_bank(img_perfs) if rnd() < 0.5 else E,
            "created_at": ts_pool[ci], "updated_at": ts_pool[ui]})
        file_id += 1

    # ------------------------------------------------------------ scenes
    n_linked = round(linked_fraction * scenes)
    ids = list(range(1, scenes + 1))
    rng.shuffle(ids)
    linked = ids[:n_linked]
    unlinked = ids[n_linked:]
    kinds = {}
    k0 = 0
    for kind, frac in (("fallback", fallback_fraction), ("wrong_hit", wrong_hit_fraction),
                       ("deleted", deleted_fraction), ("missing", missing_fraction)):
        n = min(_count(frac, n_linked), n_linked - k0)
        for sid in linked[k0:k0 + n]:
            kinds[sid] = kind
        k0 += n
    for sid in linked[k0:]:
        kinds[sid] = "normal"
    n_known = round(unlinked_known_fraction * len(unlinked))
    for sid in unlinked[:n_known]:
        kinds[sid] = "unlinked_known"
    for sid in unlinked[n_known:]:
        kinds[sid] = "unlinked"
    lib.scene_kind = kinds

    sdb_scenes = lib.stashdb["scenes"]
    prev_u = None
    pool_len = len(pool)

    def fps(oshash, phash, md5, dur):
        out = [{"algorithm": "OSHASH", "hash": oshash, "duration": dur},
               {"algorithm": "PHASH", "hash": phash, "duration": dur}]
        if md5:
            out.append({"algorithm": "MD5", "hash": md5, "duration": dur})
        return out

    def sdb_scene(sdb_id, title, fingerprints, deleted=False):
        stags = list(sdb_tag_bank[int(rnd() * 4096)])
        s = {"id": sdb_id, "title": title, "deleted": deleted, "tags": stags,
             "fingerprints": fingerprints}
        sdb_scenes[sdb_id] = s
        return s

    scene_tags, scene_perfs = bank(tags, 6), bank(performers, 3)
    sdb_tag_bank = [tuple(pool[i - 1] for i in pick(pool_len, randint(0, 12)))
                    for _ in range(4096)]
    scene_table = world._tables["scene"]
    for sid in range(1, scenes + 1):
        kind = kinds[sid]
        ci = int(rnd() * n_pool)
        ui = ci
        if rnd() < 0.7:
            ui = min(ci + int(rnd() * near), n_pool - 1)
        if prev_u is not None and rnd() < 0.05:
            ui = prev_u  # same second as the previous scene's updated_at
            ci = min(ci, ui)
        prev_u = ui
        c_text, u_text = ts_pool[ci], ts_pool[ui]
        oshash = f"{getbits(64):016x}"
        phash = f"{getbits(64):x}"
        md5 = f"{getbits(128):032x}" if rnd() < 0.3 else None
        duration = randint(120, 5400) + randint(0, 99) / 100
        dur = int(round(duration))
        title = f"{names._combos[sid % len(names._combos)]} {sid}"
        local_tags = from_bank(scene_tags)
        stash_ids = []
        if kind in ("normal", "fallback", "wrong_hit", "deleted", "missing"):
            sdb_id = _uuid(rng)
            lib.scene_link[sid] = sdb_id
            stash_ids.append({"endpoint": endpoint, "stash_id": sdb_id, "updated_at": u_text})
            if kind in ("normal", "deleted"):
                s = sdb_scene(sdb_id, title, fps(oshash, phash, md5, dur), kind == "deleted")
                if rnd() < 0.3:
                    local_tags = list(local_tags)
                    for t in s["tags"][: randint(0, len(s["tags"]))]:
                        target = tag_target.get(t["id"])
                        if target is not None and target not in local_tags:
                            local_tags.append(target)
            elif kind in ("fallback", "wrong_hit"):
                sdb_scene(sdb_id, title, fps(f"{getbits(64):016x}", f"{getbits(64):x}",
                                             None, dur))
                if kind == "wrong_hit":
                    decoy = _uuid(rng)
                    lib.decoy[sid] = decoy
                    sdb_scene(decoy, f"Other {title}", fps(oshash, phash, None, dur))
        elif kind == "unlinked_known":
            sdb_id = _uuid(rng)
            lib.fingerprint_match[sid] = sdb_id
            sdb_scene(sdb_id, title, fps(oshash, phash, md5, dur))
        if rnd() < 0.05:
            stash_ids.append({"endpoint": OTHER_ENDPOINT, "stash_id": _uuid(rng),
                              "updated_at": u_text})
        fingerprints = [{"type": "oshash", "value": oshash},
                        {"type": "phash", "value": phash}]
        if md5:
            fingerprints.append({"type": "md5", "value": md5})
        path = f"/data/videos/{sid // 1000:03d}/scene_{sid:07d}.mp4"
        r = rnd()
        scene_table[sid] = ({
            "id": sid, "title": title if r < 0.9 else None, "code": None,
            "details": None, "director": None,
            "urls": [f"https://example.org/scene/{sid}"] if r < 0.4 else E,
            "date": pick_date() if r < 0.8 else None,
            "rating100": randint(1, 100) if r < 0.2 else None, "organized": r < 0.25,
            "files": ({"id": file_id, "path": path, "basename": path[-17:],
                       "size": int(duration * 500_000), "format": "mp4",
                       "width": 1920, "height": 1080, "duration": duration,
                       "fingerprints": fingerprints},),
            "gallery_ids": [randint(1, galleries)] if galleries and rnd() < 0.1 else E,
            "studio_id": pick_studio(),
            "groups": [{"group_id": randint(1, groups), "scene_index": randint(1, 20)}]
            if groups and rnd() < 0.1 else E,
            "tag_ids": local_tags,
            "performer_ids": from_bank(scene_perfs) if rnd() < 0.8 else E,
            "stash_ids": stash_ids or E, "created_at": c_text, "updated_at": u_text})
        file_id += 1

    for etype, n in (("image", images), ("scene", scenes)):
        world._next_id[etype] = n + 1
        world._versions[etype] += 1
    world._next_file_id = file_id
    world._next_folder_id = folder_id

    # ------------------------------------------------------------ truth
    lib.stashdb_tags = sdb_tags
    lib.stashdb["tags"] = sdb_tags  # what queryTags lists (the deleted ones left out)
    lib.tag_kind = tag_kind
    by_name, by_alias, by_link = {}, {}, {}
    for tid in sorted(tag_rows):
        row = tag_rows[tid]
        by_name.setdefault(row["name"].lower(), []).append(tid)
        for a in row["aliases"]:
            lst = by_alias.setdefault(a.lower(), [])
            if tid not in lst:
                lst.append(tid)
        for s in row["stash_ids"]:
            if s["endpoint"] == endpoint:
                by_link.setdefault(s["stash_id"], []).append(tid)
    for tid, t in sdb_tags.items():
        low = t["name"].lower()
        lib.tag_matches[tid] = {"link": by_link.get(tid, []),
                                "name": by_name.get(low, []),
                                "alias": by_alias.get(low, [])}
    return lib
