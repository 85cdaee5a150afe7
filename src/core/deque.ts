// Growable ring-buffer deque: O(1) push/pop at both ends for the waiting queue.

export class Deque<T> {
  private buf: (T | undefined)[] = new Array(16);
  private head = 0;
  private count = 0;

  get length(): number {
    return this.count;
  }

  peekFront(): T | undefined {
    return this.count ? this.buf[this.head] : undefined;
  }

  pushBack(value: T): void {
    if (this.count === this.buf.length) this.grow();
    this.buf[(this.head + this.count) % this.buf.length] = value;
    this.count++;
  }

  pushFront(value: T): void {
    if (this.count === this.buf.length) this.grow();
    this.head = (this.head - 1 + this.buf.length) % this.buf.length;
    this.buf[this.head] = value;
    this.count++;
  }

  popFront(): T | undefined {
    if (!this.count) return undefined;
    const value = this.buf[this.head];
    this.buf[this.head] = undefined;
    this.head = (this.head + 1) % this.buf.length;
    this.count--;
    return value;
  }

  /** Removes every element matching `pred` (O(n)); returns how many were removed. */
  removeWhere(pred: (value: T) => boolean): number {
    const kept: T[] = [];
    let removed = 0;
    for (const v of this) {
      if (pred(v)) removed++;
      else kept.push(v);
    }
    if (removed) {
      this.buf = new Array(Math.max(16, this.buf.length));
      this.head = 0;
      this.count = 0;
      for (const v of kept) this.pushBack(v);
    }
    return removed;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = 0; i < this.count; i++) yield this.buf[(this.head + i) % this.buf.length] as T;
  }

  private grow(): void {
    const next: (T | undefined)[] = new Array(this.buf.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = this.buf[(this.head + i) % this.buf.length];
    this.buf = next;
    this.head = 0;
  }
}
