// accolade.d.ts: the types of accolade.js and of everything Accolade sends: the WebSocket
// messages both ways (docs/protocol.md), their error codes, and the bodies webhook endpoints
// receive (docs/api.md, "Webhooks"). The shapes are the server's (src/protocol.rs,
// src/webhooks.rs); tests/e2e/package.test.mjs type-checks real messages against them.

// ---------------------------------------------------------------------------------------------
// Shared pieces

/** A badge's tier. */
export type Tier = "bronze" | "silver" | "gold" | "platinum" | "diamond";

/** A badge as the catalogue describes it. */
export interface Badge {
  id: string;
  name: string;
  description: string;
  tier: Tier;
  /** An emoji or short text. */
  icon: string;
}

/** A badge the user owns, in the `welcome`. */
export interface OwnedBadge {
  id: string;
  name: string;
  /** Absent for a badge the catalogue no longer has (it is then shown by its id, as bronze). */
  description?: string;
  tier: Tier;
  /** Absent for a badge the catalogue no longer has. */
  icon?: string;
  /** How many times it was earned (more than 1 for repeatable and per-key badges). */
  count: number;
  /** When it was (last) earned, RFC 3339. */
  at: string;
  /** For a badge held for a period (`valid_for`): when it stops being held, RFC 3339. */
  expires_at?: string;
}

/** Where the client is in the user's push stream: sent as `since` in `hello` to resume. */
export interface Since {
  epoch: string;
  offset: number;
}

// ---------------------------------------------------------------------------------------------
// Client to server

export interface HelloMessage {
  type: "hello";
  /** An HS256 JWT with `sub` (the user), `tenant` and `exp`. */
  token: string;
  since?: Since;
}

export interface EventMessage {
  type: "event";
  /** 1 to 128 bytes, unique per tenant, not starting with `accolade.`: the idempotency key. */
  event_id: string;
  /** A catalogue type marked `client = true`. */
  event_type: string;
  /** RFC 3339. */
  occurred_at: string;
  payload?: Record<string, unknown>;
}

export interface WatchMessage {
  type: "watch";
  board: string;
  /** 1 to 100: also push the board's top N. */
  top?: number;
}

export interface UnwatchMessage {
  type: "unwatch";
  board: string;
}

export type ClientMessage = HelloMessage | EventMessage | WatchMessage | UnwatchMessage;

// ---------------------------------------------------------------------------------------------
// Server to client

/** The first message after `hello`: the user's state, and where the stream stands. */
export interface WelcomeMessage {
  type: "welcome";
  user: string;
  tenant: string;
  epoch: string;
  offset: number;
  xp: number;
  level: number;
  badges: OwnedBadge[];
  /** True when `since` was honoured: the missed pushes follow, in order. */
  recovered: boolean;
  catalogue_version: number;
}

/** The event is durable (to the connection that sent it only). */
export interface AckMessage {
  type: "ack";
  event_id: string;
  /** True when the event id had been counted before: nothing changed. */
  duplicate: boolean;
}

/** An event earned XP. */
export interface XpMessage {
  type: "xp";
  offset: number;
  delta: number;
  total: number;
  level: number;
  event_id: string;
}

/** A badge was earned. */
export interface UnlockMessage {
  type: "unlock";
  offset: number;
  badge: Badge;
  count: number;
  /** The key of a per-key badge (an exercise, say), else null. */
  key: string | null;
  /** The XP the badge gave. */
  xp: number;
  at: string;
  event_id: string;
}

/** A badge was taken away: remove it from what the user is shown as holding. */
export interface RevokedMessage {
  type: "revoked";
  offset: number;
  badge: Badge;
  /** "api": by the app's backend; "expired": its `valid_for` ran out; "retracted": an event
   *  behind it was retracted. */
  cause: "api" | "expired" | "retracted";
  reason: string;
  /** How many awards of it the user held. */
  count: number;
  /** The XP taken back with it (0 when kept). */
  xp: number;
  /** The user's XP and level after it (the level can go down). */
  total: number;
  level: number;
  /** When it was taken (for an expiry, when it ran out). */
  at: string;
  event_id: string;
}

export interface LevelUpMessage {
  type: "level_up";
  offset: number;
  level: number;
  event_id: string;
}

/** A measurable badge moved by a tenth of its target (or fell back, or completed). */
export interface ProgressMessage {
  type: "progress";
  offset: number;
  /** The badge id. */
  badge: string;
  /** Null only for a value that is not a finite number. */
  current: number | null;
  target: number | null;
}

export interface GoalAssignedMessage {
  type: "goal_assigned";
  offset: number;
  goal: { id: string; title: string; assigner: string; due: string | null };
  event_id: string;
}

export interface GoalCompletedMessage {
  type: "goal_completed";
  offset: number;
  goal: { id: string; title: string; assigner: string };
  at: string;
  event_id: string;
}

export interface GoalMissedMessage {
  type: "goal_missed";
  offset: number;
  goal: { id: string; title: string; assigner: string };
  at: string;
  event_id: string;
}

/** To a goal's assigner: how the goal they gave ended. */
export interface NoticeMessage {
  type: "notice";
  offset: number;
  kind: "goal_completed" | "goal_missed";
  goal: { id: string; title: string; assignee: string };
  at: string;
}

/** A team the user belongs to earned a badge (docs/teams.md); kept in her history. */
export interface TeamUnlockMessage {
  type: "team_unlock";
  offset: number;
  /** The team's id. */
  team: string;
  /** The badge as the catalogue's `[teams]` section defines it. */
  badge: Badge;
  /** How many times the team has it. */
  count: number;
  at: string;
}

/** A team the user belongs to lost a badge (expired, or its facts retracted); kept in her history. */
export interface TeamRevokedMessage {
  type: "team_revoked";
  offset: number;
  team: string;
  badge: Badge;
  /** The awards the team held. */
  count: number;
  cause: "expired" | "retracted";
  at: string;
}

/** A team the user belongs to moved toward one of its badges (not stored; no `offset`). */
export interface TeamProgressMessage {
  type: "team_progress";
  team: string;
  badge: string;
  current: number;
  target: number;
}

/**
 * Where one of the tenant's community goals stands (docs/teams.md): sent to every socket when
 * it connects and as the goal moves, throttled (not stored; no `offset`).
 */
export interface CommunityProgressMessage {
  type: "community_progress";
  goal: string;
  name: string;
  current: number;
  target: number;
  /** Users who have contributed. */
  participants: number;
  /** The deadline. */
  ends: string;
}

/** How a community goal the user took part in ended; kept in her history. */
export interface CommunityOutcomeMessage {
  type: "community_outcome";
  offset: number;
  goal: string;
  name: string;
  reached: boolean;
  total: number;
  target: number;
  participants: number;
  /** What the user contributed. */
  share: number;
  ends: string;
}

/** The user's rank on a watched board changed (not stored; no `offset`). */
export interface RankMessage {
  type: "rank";
  board: string;
  /** The period's label, e.g. `2026-W50`. */
  period: string;
  rank: number;
  score: number;
  /** How many users are ranked. */
  of: number;
  /** The rank pushed before, or null. */
  previous: number | null;
}

/** A row of a `top` push: a user's on a board of users, a team's on a board of teams. */
export type TopEntry = { rank: number; score: number } & ({ user_id: string; team_id?: never } | { team_id: string; user_id?: never });

/** The watched top N changed (not stored; no `offset`). */
export interface TopMessage {
  type: "top";
  board: string;
  period: string;
  /** The user's league on a segmented board, else null. */
  segment: string | null;
  entries: TopEntry[];
}

/** Every `error` code, with what a client does about it (docs/protocol.md, "Error codes"). */
export type ErrorCode =
  /** Bad token or an event before `hello`: the socket closes with 4001. */
  | "unauthorized"
  /** Not a usable message: fix the client. */
  | "invalid_message"
  /** The event is malformed or refused by the catalogue: not resent. */
  | "invalid_event"
  /** The event id belongs to another user of the tenant: not resent. */
  | "id_conflict"
  /** A server-only event type: send it from the backend. Not resent. */
  | "forbidden_event"
  /** Not processed: resent after `retry_after_ms` (accolade.js does this). */
  | "rate_limited"
  /** Over `--max-message-bytes`: not resent. */
  | "too_large"
  /** The user holds too many sockets: closes with 4004. */
  | "too_many_connections"
  /** Not counted: resent after a growing wait (accolade.js does this). */
  | "unavailable"
  | "unknown_board"
  | "too_many_watches";

/** Events refused this way were not processed: accolade.js sends them again. */
export type RetriedErrorCode = "rate_limited" | "unavailable";

export interface RateLimitedErrorMessage {
  type: "error";
  code: "rate_limited";
  message: string;
  event_id: string;
  /** When the connection's token bucket holds a token again. */
  retry_after_ms: number;
}

export interface OtherErrorMessage {
  type: "error";
  code: Exclude<ErrorCode, "rate_limited">;
  message: string;
  /** The refused event's id, whenever the message was an event with a string `event_id`. */
  event_id?: string;
}

export type ErrorMessage = RateLimitedErrorMessage | OtherErrorMessage;

export type ServerMessage =
  | WelcomeMessage
  | AckMessage
  | XpMessage
  | UnlockMessage
  | RevokedMessage
  | LevelUpMessage
  | ProgressMessage
  | GoalAssignedMessage
  | GoalCompletedMessage
  | GoalMissedMessage
  | NoticeMessage
  | TeamUnlockMessage
  | TeamRevokedMessage
  | TeamProgressMessage
  | CommunityProgressMessage
  | CommunityOutcomeMessage
  | RankMessage
  | TopMessage
  | ErrorMessage;

/** The pushes kept in the user's history: they carry an `offset` and are replayed after `since`. */
export type StoredPush = Extract<ServerMessage, { offset: number }>;

// ---------------------------------------------------------------------------------------------
// Webhooks

/** The notifications an endpoint can subscribe to. */
export type WebhookKind = "unlock" | "level_up" | "goal_completed" | "goal_missed" | "team_unlock" | "revoked";

interface WebhookNotificationOf<K extends WebhookKind, D> {
  /** The notification's id: the same on every endpoint and every retry. De-duplicate on it. */
  id: number;
  type: K;
  created_at: string;
  tenant: string;
  user_id: string;
  /** The push exactly as the user's sockets got it. */
  data: D;
}

/**
 * The JSON body POSTed to a webhook endpoint. It comes with the headers `accolade-id` (the
 * `id`), `accolade-event` (the `type`) and `accolade-signature: t=<unix seconds>,v1=<hex>`:
 * HMAC-SHA256 keyed with the endpoint's secret over `<t>.<raw body>` (docs/api.md).
 */
export type WebhookNotification =
  | WebhookNotificationOf<"unlock", UnlockMessage>
  | WebhookNotificationOf<"level_up", LevelUpMessage>
  | WebhookNotificationOf<"goal_completed", GoalCompletedMessage>
  | WebhookNotificationOf<"goal_missed", GoalMissedMessage>
  | WebhookNotificationOf<"revoked", RevokedMessage>
  | TeamWebhookNotification;

/** A team's unlock (docs/teams.md): names the team, not a user; `data` is the unlock as the
 *  team's own stream has it. */
export interface TeamWebhookNotification {
  id: number;
  type: "team_unlock";
  created_at: string;
  tenant: string;
  team_id: string;
  data: UnlockMessage;
}

// ---------------------------------------------------------------------------------------------
// The client

/** Why the socket closed (a close code of docs/protocol.md; 0 when no token could be had). */
export interface CloseInfo {
  code: number;
  reason: string;
}

/** What `on(type, fn)` hands `fn`, by type. */
export interface ClientEvents {
  welcome: WelcomeMessage;
  ack: AckMessage;
  xp: XpMessage;
  unlock: UnlockMessage;
  revoked: RevokedMessage;
  level_up: LevelUpMessage;
  progress: ProgressMessage;
  goal_assigned: GoalAssignedMessage;
  goal_completed: GoalCompletedMessage;
  goal_missed: GoalMissedMessage;
  notice: NoticeMessage;
  team_unlock: TeamUnlockMessage;
  rank: RankMessage;
  top: TopMessage;
  error: ErrorMessage;
  /** The client is connected: fired right after `welcome`, with it. */
  open: WelcomeMessage;
  /** The socket closed (the client reconnects unless `disconnect()` was called). */
  close: CloseInfo;
}

/** Where `since` is kept across page loads, e.g. localStorage. */
export interface SinceStorage {
  get(key: string): string | null | undefined;
  set(key: string, value: string): void;
}

/** What the client needs of a WebSocket: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

export interface AccoladeClientOptions {
  /** The server's socket, e.g. `wss://example.com/v1/ws`. */
  url: string;
  /** The user's token, or a function returning it; asked again on every reconnect. */
  token: string | (() => string | Promise<string>);
  /** Keeps `since` so that a reloaded page resumes where it was. */
  storage?: SinceStorage | null;
  /** Cap of the reconnect backoff and of the `unavailable` resend wait (default 15000). */
  maxBackoffMs?: number;
  /** The first wait before an event answered `unavailable` is sent again (default 500). */
  retryMs?: number;
  /** The WebSocket constructor (default `globalThis.WebSocket`; in Node 20 pass `ws`). */
  WebSocket?: new (url: string) => WebSocketLike;
}

export interface SendOptions {
  /** The idempotency key (default `crypto.randomUUID()`): the same id is counted once. */
  eventId?: string;
  /** When it happened (default now). */
  occurredAt?: Date;
}

export interface WatchOptions {
  /** Also push the board's top N (1 to 100). */
  top?: number;
}

export class AccoladeClient {
  constructor(options: AccoladeClientOptions);
  /** Subscribes to a message type or to `open`/`close`. Returns an unsubscribe function. */
  on<K extends keyof ClientEvents>(type: K, fn: (msg: ClientEvents[K]) => void): () => void;
  /** Connects, and reconnects with backoff after every drop until `disconnect()`. */
  connect(): void;
  /** Closes the socket and stops reconnecting until `connect()`. */
  disconnect(): void;
  /**
   * Sends an event now, or after (re)connecting, and returns its `event_id`. It is kept until
   * acknowledged: resent after every reconnect, after `retry_after_ms` when `rate_limited`,
   * after a growing wait when `unavailable`; dropped when refused for what it is.
   */
  send(eventType: string, payload?: Record<string, unknown>, options?: SendOptions): string;
  /** Asks for `rank` (and with `top`, `top`) pushes of a board, on every later connection too. */
  watch(board: string, options?: WatchOptions): void;
  unwatch(board: string): void;
  /** True between a `welcome` and the next close. */
  readonly connected: boolean;
  /** The last position seen in the user's push stream, sent as `since` on reconnect. */
  readonly since: Since | null;
}
