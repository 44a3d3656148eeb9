// Semantic versions as the release tool writes them (`1.4.0`, `1.5.0-beta.2`), ordered by
// SemVer 2.0 precedence: a prerelease is older than its final version, numeric prerelease
// parts compare as numbers and sort before alphanumeric ones, build metadata is ignored.
// Used to mark agents older than the newest release they could get.

export interface Version {
  major: number;
  minor: number;
  patch: number;
  /** Prerelease identifiers (`beta.2` → ['beta', 2]); empty for a final version. */
  pre: (string | number)[];
}

const SEMVER = /^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$/;

/** Parses `X.Y.Z[-pre][+build]` (a leading `v` is allowed); null when it is not one. */
export function parseVersion(text: string | null | undefined): Version | null {
  const m = SEMVER.exec((text ?? '').trim());
  if (!m) return null;
  const pre = m[4] ? m[4].split('.').map((p) => (/^\d+$/.test(p) ? Number(p) : p)) : [];
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]), pre };
}

function comparePre(a: (string | number)[], b: (string | number)[]): number {
  // A final version outranks every prerelease of the same X.Y.Z.
  if (!a.length && !b.length) return 0;
  if (!a.length) return 1;
  if (!b.length) return -1;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i] as string | number;
    const y = b[i] as string | number;
    if (x === y) continue;
    if (typeof x === 'number' && typeof y === 'number') return x < y ? -1 : 1;
    if (typeof x === 'number') return -1;
    if (typeof y === 'number') return 1;
    return x < y ? -1 : 1;
  }
  return Math.sign(a.length - b.length);
}

/** -1, 0 or 1 as `a` is older than, equal to or newer than `b`; unparseable versions
 * sort before every real one (and equal to each other). */
export function compareVersions(a: string, b: string): number {
  const x = parseVersion(a);
  const y = parseVersion(b);
  if (!x || !y) return (x ? 1 : 0) - (y ? 1 : 0);
  for (const k of ['major', 'minor', 'patch'] as const) {
    if (x[k] !== y[k]) return x[k] < y[k] ? -1 : 1;
  }
  return comparePre(x.pre, y.pre);
}

/** The newest of `versions` (unparseable ones ignored), or null. */
export function newestVersion(versions: Iterable<string>): string | null {
  let best: string | null = null;
  for (const v of versions) {
    if (!parseVersion(v)) continue;
    if (best === null || compareVersions(v, best) > 0) best = v;
  }
  return best;
}

/** Whether an agent at `current` is older than `newest`. An agent whose version cannot be
 * parsed is not called outdated: we cannot tell. */
export function isOutdated(current: string | null | undefined, newest: string | null | undefined): boolean {
  if (!newest || !parseVersion(current) || !parseVersion(newest)) return false;
  return compareVersions(current as string, newest) < 0;
}
