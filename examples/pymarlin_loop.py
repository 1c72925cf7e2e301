#!/usr/bin/python3
"""A minimal pymarlin-shaped training loop checkpointed by ackpt.pymarlin.

Makes pymarlin's Trainer calls in its order: load() when the trainer is
built (update_state() of the module, trainer and backend), save() after
every epoch, save(force=True) after training and save_model() at the end.
Run it twice (or kill it and rerun): the second run resumes.

  PYTHONPATH=build/python /usr/bin/python3 examples/pymarlin_loop.py --save-dir /tmp/loop --epochs 5
"""
import argparse
import time

import torch

from ackpt.pymarlin import AsyncCheckpointer, Checkpoint, DefaultCheckpointerArguments


class ModuleInterface(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def get_optimizers_schedulers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)]

    def train_step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def get_state(self):
        return self.state_dict()

    def update_state(self, state):
        if state:
            self.load_state_dict(state)


class SingleProcess:
    """pymarlin's trainer backend: runs the batches, counts global steps."""

    def __init__(self):
        self.global_step_completed = 0

    def get_state(self):
        return {"global_step_completed": self.global_step_completed, "rng": torch.get_rng_state()}

    def update_state(self, state):
        if state:
            self.global_step_completed = state["global_step_completed"]
            torch.set_rng_state(state["rng"])


class Trainer:
    def __init__(self, module, backend, epochs, checkpointer, steps_per_epoch=20, sleep=0.0):
        self.module, self.backend, self.epochs = module, backend, epochs
        self.checkpointer, self.steps_per_epoch, self.sleep = checkpointer, steps_per_epoch, sleep
        self.optimizers, self.schedulers = module.get_optimizers_schedulers()
        self.last_epoch = -1
        checkpoint = self.checkpointer.load()  # as pymarlin's Trainer.__init__
        self.module.update_state(checkpoint.module_interface_state)
        self.update_state(checkpoint.trainer_state)
        self.backend.update_state(checkpoint.trainer_backend_state)
        if self.last_epoch >= 0:
            print("resumed after epoch %d (global step %d)" % (self.last_epoch, self.backend.global_step_completed))

    def get_state(self):
        return {"last_epoch": self.last_epoch,
                "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def update_state(self, state):
        if state:
            self.last_epoch = state["last_epoch"]
            for o, s in zip(self.optimizers, state["optimizers"]):
                o.load_state_dict(s)
            for sch, s in zip(self.schedulers, state["schedulers"]):
                sch.load_state_dict(s)

    def checkpoint_state(self):
        return Checkpoint(self.module.get_state(), self.get_state(), self.backend.get_state())

    def train(self):
        for epoch in range(self.last_epoch + 1, self.epochs):
            for _ in range(self.steps_per_epoch):
                x = torch.randn(8, 16)
                loss = self.module.train_step((x, x.sum(1, keepdim=True)))
                for o in self.optimizers:
                    o.zero_grad()
                loss.backward()
                for o in self.optimizers:
                    o.step()
                self.backend.global_step_completed += 1
                if self.sleep:
                    time.sleep(self.sleep)
            for s in self.schedulers:
                s.step()
            self.last_epoch = epoch
            print("epoch %d loss %.6f" % (epoch, loss.item()), flush=True)
            self.checkpointer.save(self.checkpoint_state(), epoch)
        self.checkpointer.save(self.checkpoint_state(), self.last_epoch, force=True)
        self.checkpointer.save_model(self.module.get_state(), self.last_epoch)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save-dir", default="pymarlin_checkpoints")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (tests kill it mid-run)")
    p.add_argument("--dump", help="write the final parameters here (torch.save)")
    a = p.parse_args()
    torch.manual_seed(0)
    args = DefaultCheckpointerArguments(save_dir=a.save_dir, model_state_save_dir=a.save_dir,
                                        log_level="WARN", keep_last=2)
    trainer = Trainer(ModuleInterface(), SingleProcess(), a.epochs, AsyncCheckpointer(args),
                      a.steps_per_epoch, a.sleep)
    trainer.train()
    if a.dump:
        torch.save(trainer.module.state_dict(), a.dump)
    print("done: %d epochs, global step %d" % (trainer.epochs, trainer.backend.global_step_completed))


if __name__ == "__main__":
    main()
